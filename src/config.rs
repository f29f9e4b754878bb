//! Configuration: [`Config`] and the `GRAPHALLOC_CONF` environment variable.
//!
//! `GRAPHALLOC_CONF` uses the `key:value,key:value` style of PyTorch's
//! `PYTORCH_CUDA_ALLOC_CONF`:
//!
//! | key | values | default |
//! | --- | --- | --- |
//! | `backend` | `auto`, `host`, `cuda` | `auto` (CUDA when a driver loads, else host) |
//! | `host_capacity` | bytes, with an optional `KiB`/`MiB`/`GiB`/`TiB` suffix, 1 B to 1 PiB | `80GiB` |
//! | `host_devices` | number of simulated devices on the host backend, 1 to 64 | `1` |
//! | `memory_fraction` | fraction of each device's total memory graphalloc may reserve, in (0, 1] | `1` |
//! | `expandable_segments` | `true`/`false`: cache blocks from address ranges (one per stream and size class) with memory mapped in as needed; `false`: plain segments, like PyTorch's default | `true` |
//! | `shards` | arenas per device cache, 1 to 64: more let threads allocate without meeting on one lock, and peaks become sums of per-shard peaks (upper bounds) | `1` |
//! | `history` | events the memory history keeps (0: off), 0 to 2^26; see [`crate::Allocator::record_history`] | `0` |
//! | `history_backtraces` | `true`/`false`: each history event captures a Rust backtrace (slow; for debugging) | `false` |
//!
//! A malformed or out-of-range value is an [`Error::Config`] naming the key;
//! an unknown key, and a key given twice, are one too. Nothing falls back to
//! a default, or to the last of two values, silently.

use crate::error::{Error, Result};

/// The environment variable read by [`Config::from_env`].
pub const ENV_VAR: &str = "GRAPHALLOC_CONF";

/// The largest `host_capacity` accepted: 1 PiB. Address arithmetic on a
/// simulated device (an expandable segment's range is twice the device)
/// must not overflow, and no host offers more.
const MAX_HOST_CAPACITY: usize = 1 << 50;

/// The most simulated devices (`host_devices`) and arenas per device cache
/// (`shards`) accepted, from text or in a [`Config`] built by hand.
pub(crate) const MAX_DEVICES_OR_SHARDS: usize = 64;

/// Which device backend an allocator uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// CUDA when a driver can be loaded and a device exists, else host memory.
    #[default]
    Auto,
    /// Host memory standing in for device memory.
    Host,
    /// The CUDA driver; fails where no driver loads.
    Cuda,
}

/// How an [`crate::Allocator`] is built.
///
/// ```
/// use graphalloc::{BackendChoice, Config};
/// let config = Config::parse("backend:host,host_capacity:1GiB").unwrap();
/// assert_eq!(config.backend, BackendChoice::Host);
/// assert_eq!(config.host_capacity, 1 << 30);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The device backend.
    pub backend: BackendChoice,
    /// Bytes each simulated device offers on the host backend.
    pub host_capacity: usize,
    /// Number of simulated devices on the host backend.
    pub host_devices: usize,
    /// Fraction of each device's total memory graphalloc may reserve.
    pub memory_fraction: f64,
    /// Arenas per device cache; see the table of the [`config`](self)
    /// module. 1 (the
    /// default) keeps PyTorch's shape: one lock per device, exact peaks.
    pub shards: usize,
    /// Serve the cache's requests from expandable segments (the default):
    /// one address range per stream and size class, with device memory
    /// mapped into it in pages when no mapped free block fits, and idle
    /// pages unmapped in batches only when the cache would pass its idle
    /// budget, the device limit, or on `empty_cache` (see the README). Like
    /// PyTorch's `expandable_segments:True`; `false` keeps plain segments.
    pub expandable_segments: bool,
    /// Events the memory history keeps from the start (0: not recording);
    /// see [`crate::Allocator::record_history`].
    pub history: usize,
    /// Whether each history event captures a Rust backtrace.
    pub history_backtraces: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: BackendChoice::Auto,
            host_capacity: 80 << 30,
            host_devices: 1,
            memory_fraction: 1.0,
            shards: 1,
            expandable_segments: true,
            history: 0,
            history_backtraces: false,
        }
    }
}

impl Config {
    /// A host-backend configuration with `capacity` bytes on one device.
    pub fn host(capacity: usize) -> Self {
        Config {
            backend: BackendChoice::Host,
            host_capacity: capacity,
            ..Config::default()
        }
    }

    /// The defaults, overridden by `GRAPHALLOC_CONF` where it is set.
    pub fn from_env() -> Result<Self> {
        match std::env::var(ENV_VAR) {
            Ok(text) => Config::parse(&text),
            Err(std::env::VarError::NotPresent) => Ok(Config::default()),
            Err(std::env::VarError::NotUnicode(raw)) => Err(Error::Config {
                key: ENV_VAR.into(),
                value: raw.to_string_lossy().into_owned(),
                reason: "not valid UTF-8".into(),
            }),
        }
    }

    /// The defaults, overridden by `key:value` pairs separated by commas.
    /// Each key may appear once: a second value for a key is an
    /// [`Error::Config`] naming it, not a silent override.
    ///
    /// ```
    /// use graphalloc::{Config, Error};
    /// let err = Config::parse("shards:2,shards:4").unwrap_err();
    /// assert!(matches!(err, Error::Config { key, .. } if key == "shards"));
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        let mut config = Config::default();
        let mut seen: Vec<&str> = Vec::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once(':').ok_or_else(|| Error::Config {
                key: pair.into(),
                value: String::new(),
                reason: "expected key:value".into(),
            })?;
            let (key, value) = (key.trim(), value.trim());
            if seen.contains(&key) {
                return Err(Error::Config {
                    key: key.into(),
                    value: value.into(),
                    reason: "the key is given more than once".into(),
                });
            }
            seen.push(key);
            config.set(key, value)?;
        }
        Ok(config)
    }

    /// Sets one key from its textual value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let bad = |reason: &str| Error::Config {
            key: key.into(),
            value: value.into(),
            reason: reason.into(),
        };
        match key {
            "backend" => {
                self.backend = match value.to_ascii_lowercase().as_str() {
                    "auto" => BackendChoice::Auto,
                    "host" => BackendChoice::Host,
                    "cuda" => BackendChoice::Cuda,
                    _ => return Err(bad("expected auto, host or cuda")),
                }
            }
            "host_capacity" => {
                self.host_capacity = parse_bytes(value)
                    .filter(|b| (1..=MAX_HOST_CAPACITY).contains(b))
                    .ok_or_else(|| {
                        bad("expected a byte count from 1 to 1PiB, such as 4096, 512MiB or 8GiB")
                    })?
            }
            "host_devices" => {
                self.host_devices = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_DEVICES_OR_SHARDS).contains(n))
                    .ok_or_else(|| bad(RANGE_1_TO_64))?
            }
            "expandable_segments" => {
                self.expandable_segments =
                    parse_bool(value).ok_or_else(|| bad("expected true or false"))?
            }
            "history_backtraces" => {
                self.history_backtraces =
                    parse_bool(value).ok_or_else(|| bad("expected true or false"))?
            }
            "history" => {
                self.history = value
                    .parse()
                    .ok()
                    .filter(|n| *n <= crate::history::MAX_HISTORY)
                    .ok_or_else(|| {
                        bad("expected a whole number of events from 0 (off) to 67108864")
                    })?
            }
            "shards" => {
                self.shards = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_DEVICES_OR_SHARDS).contains(n))
                    .ok_or_else(|| bad(RANGE_1_TO_64))?
            }
            "memory_fraction" => {
                self.memory_fraction = value
                    .parse()
                    .ok()
                    .filter(|f: &f64| *f > 0.0 && *f <= 1.0)
                    .ok_or_else(|| bad("expected a number in (0, 1]"))?
            }
            _ => return Err(bad(
                "unknown key; known keys: backend, host_capacity, host_devices, memory_fraction, \
                 shards, expandable_segments, history, history_backtraces",
            )),
        }
        Ok(())
    }
}

/// The reason given for `host_devices` and `shards` out of range.
const RANGE_1_TO_64: &str = "expected a whole number from 1 to 64";

impl Config {
    /// Refuses, as [`Config::parse`] would, the fields of a hand-built
    /// config that would make an allocator try to build more simulated
    /// devices or arenas than it accepts (with `usize::MAX`, a panic).
    /// (`host_devices` is looked at only for the host backend; 0 of either
    /// is left to the callers, as before.)
    pub(crate) fn check_counts(&self, host_devices: bool) -> Result<()> {
        let too_many = |key: &str, n: usize| Error::Config {
            key: key.into(),
            value: n.to_string(),
            reason: RANGE_1_TO_64.into(),
        };
        if host_devices && self.host_devices > MAX_DEVICES_OR_SHARDS {
            return Err(too_many("host_devices", self.host_devices));
        }
        if self.shards > MAX_DEVICES_OR_SHARDS {
            return Err(too_many("shards", self.shards));
        }
        Ok(())
    }
}

/// Parses `true`/`1`/`yes` and `false`/`0`/`no`, in any case.
fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Parses `123`, `4KiB`, `512MiB`, `8GiB` (also `KB`/`MB`/`GB` as powers of 1024).
fn parse_bytes(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    number.checked_mul(1usize << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key() {
        let c = Config::parse(
            "backend:cuda, host_capacity:3MiB,host_devices:2,memory_fraction:0.5,shards:8",
        )
        .unwrap();
        assert_eq!(c.backend, BackendChoice::Cuda);
        assert_eq!(c.host_capacity, 3 << 20);
        assert_eq!(c.host_devices, 2);
        assert_eq!(c.memory_fraction, 0.5);
        assert_eq!(c.shards, 8);
    }

    #[test]
    fn capacity_bounds_are_inclusive() {
        assert_eq!(Config::parse("host_capacity:1").unwrap().host_capacity, 1);
        let max = Config::parse("host_capacity:1024TiB").unwrap();
        assert_eq!(max.host_capacity, MAX_HOST_CAPACITY);
    }

    #[test]
    fn a_repeated_key_names_itself_and_its_second_value() {
        match Config::parse("shards:2, shards : 4") {
            Err(Error::Config { key, value, reason }) => {
                assert_eq!((key.as_str(), value.as_str()), ("shards", "4"));
                assert!(reason.contains("more than once"), "{reason}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn history_keys_parse() {
        let c = Config::parse("history:100000,history_backtraces:true").unwrap();
        assert_eq!((c.history, c.history_backtraces), (100_000, true));
        assert_eq!(Config::parse("history:0").unwrap().history, 0);
        assert_eq!(Config::default().history, 0);
    }

    #[test]
    fn empty_text_is_the_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn malformed_values_name_their_key() {
        for (text, key) in [
            ("backend:gpu", "backend"),
            ("host_capacity:lots", "host_capacity"),
            ("host_capacity:0", "host_capacity"),
            ("host_capacity:99999999999999999999", "host_capacity"),
            ("host_capacity:8388608TiB", "host_capacity"),
            ("host_capacity:1025TiB", "host_capacity"),
            ("host_capacity:1125899906842625", "host_capacity"),
            ("shards:2,shards:4", "shards"),
            ("backend:host, backend:host", "backend"),
            (
                "host_capacity:1GiB,expandable_segments:true,host_capacity:2GiB",
                "host_capacity",
            ),
            ("host_devices:0", "host_devices"),
            ("memory_fraction:1.5", "memory_fraction"),
            ("memory_fraction:0", "memory_fraction"),
            ("shards:0", "shards"),
            ("shards:65", "shards"),
            ("colour:blue", "colour"),
            ("history:-1", "history"),
            ("history:lots", "history"),
            ("history:1e5", "history"),
            ("history:67108865", "history"),
            ("history:", "history"),
            ("history:10,history:20", "history"),
            ("history_backtraces:maybe", "history_backtraces"),
            ("backend", "backend"),
        ] {
            match Config::parse(text) {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: expected a config error, got {other:?}"),
            }
        }
    }
}
