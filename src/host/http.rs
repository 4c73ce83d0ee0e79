//! The agent's one HTTP client (filled in by the http facility work).
