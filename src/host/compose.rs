//! Interface to `docker compose` / `docker-compose` (filled in by the apt facility work).
