//! Interface to `iptables-save` / `iptables-restore` (filled in by the firewall split).
