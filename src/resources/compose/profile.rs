//! Box-sized resource overrides for the compose file, and the runbook's budget table.
//! Values resolve in this order: the config's `[compose.overrides]`, then the profile,
//! then the `${VAR:-default}` the compose file itself carries.

use std::collections::BTreeMap;

use serde::Serialize;

/// The runbook's environment-variable reference for production on a CPX62
/// (16 shared vCPU, 32 GB).
pub const CPX62: &[(&str, &str)] = &[
    ("WEB_WORKERS", "4"),
    ("WEB_MEMORY", "6g"),
    ("WEB_CPUS", "4.0"),
    ("WEB_MEMORY_RESERVATION", "1g"),
    ("RENDER_MEMORY", "6g"),
    ("RENDER_CPUS", "4.0"),
    ("RENDER_FFMPEG_THREADS", "4"),
    ("RENDER_MEMORY_RESERVATION", "2g"),
    ("PROXY_MEMORY", "3g"),
    ("PROXY_CPUS", "3.0"),
    ("PROXY_FFMPEG_THREADS", "3"),
    ("DOWNLOAD_MEMORY", "2g"),
    ("DOWNLOAD_CPUS", "2.0"),
    ("ANALYSIS_MEMORY", "2g"),
    ("ANALYSIS_CPUS", "1.5"),
    ("ANALYSIS_TASKIQ_CONCURRENCY", "4"),
    ("REDIS_MAXMEMORY", "500mb"),
    ("REDIS_MEMORY", "768m"),
    ("REDIS_CPUS", "0.5"),
    ("RABBITMQ_MEMORY", "1g"),
    ("CADDY_MEMORY", "256m"),
    ("CADDY_CPUS", "0.25"),
    ("POSTGRES_POOL_SIZE", "20"),
    ("POSTGRES_MAX_OVERFLOW", "10"),
    ("STORAGE_MAX_UPLOAD_SIZE_MB", "10240"),
    ("MAX_VIDEO_DURATION_MINUTES", "90"),
];

/// Service groups whose `<GROUP>_MEMORY` / `<GROUP>_CPUS` make up the budget.
pub const GROUPS: &[&str] = &[
    "WEB", "RENDER", "PROXY", "DOWNLOAD", "ANALYSIS", "REDIS", "RABBITMQ", "CADDY",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Cpx62,
    /// The compose file's own defaults (sized for staging: 4 vCPU / 16 GB).
    Staging,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Cpx62 => "cpx62",
            Profile::Staging => "staging",
        }
    }

    pub fn values(self) -> BTreeMap<String, String> {
        match self {
            Profile::Cpx62 => CPX62
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            Profile::Staging => BTreeMap::new(),
        }
    }

    /// `auto`: the production profile needs a box of its size.
    pub fn auto(cpus: usize, memory: u64) -> Self {
        if cpus >= 16 && memory >= 30 << 30 {
            Profile::Cpx62
        } else {
            Profile::Staging
        }
    }
}

/// `${VAR:-default}` / `${VAR-default}` defaults written in a compose file.
pub fn compose_defaults(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find('}') else { break };
        let inner = &rest[..end];
        if let Some((name, default)) = inner.split_once(":-").or_else(|| inner.split_once('-')) {
            out.entry(name.trim().to_string())
                .or_insert_with(|| default.to_string());
        }
        rest = &rest[end..];
    }
    out
}

/// Docker's memory notation (`6g`, `768m`, `500mb`, `1024k`, bytes) in bytes.
pub fn memory_bytes(v: &str) -> Option<u64> {
    let v = v.trim().to_ascii_lowercase();
    // `500mb` and `500m` mean the same to Docker.
    let v = match v.strip_suffix('b') {
        Some(rest) if rest.ends_with(['k', 'm', 'g', 't']) => rest,
        _ => v.as_str(),
    };
    let (num, shift) = match v.chars().last()? {
        'k' => (&v[..v.len() - 1], 10),
        'm' => (&v[..v.len() - 1], 20),
        'g' => (&v[..v.len() - 1], 30),
        't' => (&v[..v.len() - 1], 40),
        _ => (v, 0),
    };
    let n: f64 = num.parse().ok()?;
    (n >= 0.0).then(|| (n * (1u64 << shift) as f64) as u64)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub group: String,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Budget {
    pub lines: Vec<Line>,
    pub memory_total: u64,
    pub cpus_total: f64,
    pub box_memory: u64,
    pub box_cpus: usize,
    pub headroom: u64,
}

impl Budget {
    pub fn new(
        values: &BTreeMap<String, String>,
        box_memory: u64,
        box_cpus: usize,
        headroom: u64,
    ) -> Self {
        let lines: Vec<Line> = GROUPS
            .iter()
            .map(|g| Line {
                group: g.to_lowercase(),
                memory: values
                    .get(&format!("{g}_MEMORY"))
                    .and_then(|v| memory_bytes(v)),
                cpus: values
                    .get(&format!("{g}_CPUS"))
                    .and_then(|v| v.trim().parse().ok()),
            })
            .collect();
        Budget {
            memory_total: lines.iter().filter_map(|l| l.memory).sum(),
            // An empty f64 sum is -0.0, which would print as "-0.00".
            cpus_total: lines.iter().filter_map(|l| l.cpus).sum::<f64>() + 0.0,
            lines,
            box_memory,
            box_cpus,
            headroom,
        }
    }

    /// Memory limits beyond physical memory minus the headroom: the box would OOM as a
    /// whole before any container hits its own limit.
    pub fn memory_overcommitted(&self) -> bool {
        self.memory_total > self.box_memory.saturating_sub(self.headroom)
    }

    /// Groups whose own CPU limit exceeds the vCPU count: Docker refuses to create such a
    /// container, so a converge would stop the service and fail half-way.
    pub fn cpu_limit_above_box(&self) -> Vec<&Line> {
        self.lines
            .iter()
            .filter(|l| l.cpus.is_some_and(|c| c > self.box_cpus as f64))
            .collect()
    }

    /// CPU limits above the vCPU count: accepted by the runbook (shared vCPUs), reported.
    pub fn cpu_oversubscribed(&self) -> bool {
        self.cpus_total > self.box_cpus as f64
    }

    pub fn render(&self) -> String {
        let gib = |b: u64| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64);
        let mut s = format!("{:<10} {:>12} {:>6}\n", "service", "memory", "cpus");
        for l in &self.lines {
            s.push_str(&format!(
                "{:<10} {:>12} {:>6}\n",
                l.group,
                l.memory.map_or("-".to_string(), gib),
                l.cpus.map_or("-".to_string(), |c| format!("{c:.2}"))
            ));
        }
        s.push_str(&format!(
            "{:<10} {:>12} {:>6.2}\n",
            "total",
            gib(self.memory_total),
            self.cpus_total
        ));
        s.push_str(&format!(
            "{:<10} {:>12} {:>6}\n",
            "box",
            gib(self.box_memory),
            self.box_cpus
        ));
        let left = self.box_memory as i128 - self.memory_total as i128;
        s.push_str(&format!(
            "{:<10} {:>12} {:>6.2}   (required free memory: {})\n",
            "unallocated",
            if left < 0 {
                format!("-{}", gib((-left) as u64))
            } else {
                gib(left as u64)
            },
            self.box_cpus as f64 - self.cpus_total,
            gib(self.headroom)
        ));
        s
    }
}

/// Resolve every variable: config overrides win over the profile, which wins over the
/// compose file's defaults.
pub fn resolve(
    compose_text: &str,
    profile: Profile,
    overrides: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut agent_env = profile.values();
    agent_env.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut all = compose_defaults(compose_text);
    all.extend(agent_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    (agent_env, all)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPOSE: &str = "services:\n  web:\n    deploy:\n      resources:\n        limits:\n          memory: ${WEB_MEMORY:-4g}\n          cpus: '${WEB_CPUS:-2.0}'\n  caddy:\n    mem_limit: ${CADDY_MEMORY-128m}\n";

    #[test]
    fn cpx62_budget_matches_the_runbook() {
        let b = Budget::new(&Profile::Cpx62.values(), 32 << 30, 16, 2 << 30);
        // 6+6+3+2+2 GiB + 768 MiB + 1 GiB + 256 MiB = 21 GiB
        assert_eq!(b.memory_total, 21 << 30);
        assert!((b.cpus_total - 15.25).abs() < 1e-9);
        assert!(!b.memory_overcommitted());
        assert!(!b.cpu_oversubscribed());
        let t = b.render();
        assert!(
            t.contains("render") && t.contains("21.00 GiB") && t.contains("15.25"),
            "{t}"
        );
    }

    #[test]
    fn cpx62_on_a_small_box_is_overcommitted() {
        let b = Budget::new(&Profile::Cpx62.values(), 16 << 30, 4, 2 << 30);
        assert!(b.memory_overcommitted());
        assert!(b.cpu_oversubscribed());
        assert!(b.cpu_limit_above_box().is_empty(), "4.0 fits 4 vCPUs");
        let b = Budget::new(&Profile::Cpx62.values(), 24 << 30, 2, 2 << 30);
        let over: Vec<&str> = b
            .cpu_limit_above_box()
            .iter()
            .map(|l| l.group.as_str())
            .collect();
        assert_eq!(over, ["web", "render", "proxy"]);
    }

    #[test]
    fn overrides_win_over_profile_over_compose_defaults() {
        let mut ov = BTreeMap::new();
        ov.insert("WEB_MEMORY".to_string(), "5g".to_string());
        let (agent, all) = resolve(COMPOSE, Profile::Cpx62, &ov);
        assert_eq!(agent["WEB_MEMORY"], "5g");
        assert_eq!(agent["RENDER_MEMORY"], "6g");
        let (agent, all_staging) = resolve(COMPOSE, Profile::Staging, &BTreeMap::new());
        assert!(agent.is_empty(), "staging adds nothing");
        assert_eq!(all_staging["WEB_MEMORY"], "4g");
        assert_eq!(all_staging["CADDY_MEMORY"], "128m");
        assert_eq!(all["WEB_CPUS"], "4.0");
    }

    #[test]
    fn memory_units() {
        assert_eq!(memory_bytes("6g"), Some(6 << 30));
        assert_eq!(memory_bytes("768m"), Some(768 << 20));
        assert_eq!(memory_bytes("500mb"), Some(500 << 20));
        assert_eq!(memory_bytes("1G"), Some(1 << 30));
        assert_eq!(memory_bytes("1024"), Some(1024));
        assert_eq!(memory_bytes("lots"), None);
    }

    #[test]
    fn auto_picks_by_box_size() {
        assert_eq!(Profile::auto(16, 32 << 30), Profile::Cpx62);
        assert_eq!(Profile::auto(4, 16 << 30), Profile::Staging);
    }
}
