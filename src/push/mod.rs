//! Push: collect change notifications from the registry, debounce them, build an
//! immutable `PushContext`, translate for each class of proxy and hand each
//! connection its new snapshot.

mod class;
pub mod debounce;
mod eds;
pub mod engine;

pub use engine::{PushSummary, Pusher};

/// Defined in the model, below both the registry (which publishes) and push (which
/// consumes).
pub use crate::model::push_request::{ContextSource, PushQueue, PushRequest};
