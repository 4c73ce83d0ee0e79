//! Interface to `systemctl` (filled in by the systemctl facility work).
