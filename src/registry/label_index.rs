//! Label indexes of one shard: `namespace -> label key -> label value -> object
//! names`, and the set-valued maps the shard keeps its secondary indexes in.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::model::service::Labels;

/// `namespace -> label key -> label value -> object names`. Matching Pods to
/// Services goes through it, so the cost of a change is proportional to the
/// objects sharing a label with it, not to the size of the namespace: loading
/// 10,000 Services over 100,000 Pods in one namespace is not 10^9 selector
/// checks.
#[derive(Debug, Default)]
pub(super) struct LabelIndex(
    HashMap<Arc<str>, HashMap<String, HashMap<String, BTreeSet<Arc<str>>>>>,
);

impl LabelIndex {
    pub(super) fn insert(&mut self, ns: &Arc<str>, k: &str, v: &str, name: &Arc<str>) {
        let by_key = self.0.entry(ns.clone()).or_default();
        let by_value = match by_key.get_mut(k) {
            Some(m) => m,
            None => by_key.entry(k.to_string()).or_default(),
        };
        match by_value.get_mut(v) {
            Some(set) => {
                set.insert(name.clone());
            }
            None => {
                by_value.insert(v.to_string(), [name.clone()].into());
            }
        }
    }

    pub(super) fn remove(&mut self, ns: &str, k: &str, v: &str, name: &str) {
        let Some(by_key) = self.0.get_mut(ns) else {
            return;
        };
        if let Some(by_value) = by_key.get_mut(k) {
            if let Some(set) = by_value.get_mut(v) {
                set.remove(name);
                if set.is_empty() {
                    by_value.remove(v);
                }
            }
            if by_value.is_empty() {
                by_key.remove(k);
            }
        }
        if by_key.is_empty() {
            self.0.remove(ns);
        }
    }

    pub(super) fn get(&self, ns: &str, k: &str, v: &str) -> Option<&BTreeSet<Arc<str>>> {
        self.0.get(ns)?.get(k)?.get(v)
    }

    pub(super) fn insert_all(&mut self, ns: &Arc<str>, labels: &Labels, name: &Arc<str>) {
        for (k, v) in labels.iter() {
            self.insert(ns, k, v, name);
        }
    }

    pub(super) fn remove_all(&mut self, ns: &str, labels: &Labels, name: &str) {
        for (k, v) in labels.iter() {
            self.remove(ns, k, v, name);
        }
    }
}

pub(super) fn index_insert<K: std::hash::Hash + Eq, V: Ord>(
    m: &mut HashMap<K, BTreeSet<V>>,
    k: K,
    v: V,
) {
    m.entry(k).or_default().insert(v);
}

pub(super) fn index_remove<K: std::hash::Hash + Eq, V: Ord>(
    m: &mut HashMap<K, BTreeSet<V>>,
    k: &K,
    v: &V,
) {
    if let Some(set) = m.get_mut(k) {
        set.remove(v);
        if set.is_empty() {
            m.remove(k);
        }
    }
}
