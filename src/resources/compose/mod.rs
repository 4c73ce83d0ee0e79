//! `compose`: the application stack under `docker compose` with box-sized limits.
//! This version carries the sizing logic; the resource itself comes next.

pub mod profile;
