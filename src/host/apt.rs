//! Interface to `apt-get`, `dpkg-query` and the apt lists (filled in by the apt facility work).
