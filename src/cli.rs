//! The command line (DESIGN.md §1).
