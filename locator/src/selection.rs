//! Edge selection (being written).
