//! The scheduler tick as the sampling clock, by default (the BPF side
//! is `lagtrace-ebpf/src/probes/sample.rs`). A CPU that runs a thread
//! takes its tick anyway, so a program on the tick's hrtimer samples with
//! no interrupt of its own and nothing to switch at a context switch.
//!
//! It serves only where the tick is a steady clock on every CPU that runs a
//! target: high-resolution timers on (the tick is then an hrtimer, whose
//! expiry has a tracepoint), no `nohz_full` CPU (whose tick stops under a
//! lone busy task), and a tick function named in /proc/kallsyms with its
//! address visible. Its rate is the kernel's HZ, which no file states on
//! every kernel: it is read from the kernel's config where that is at hand,
//! else measured from jiffies.
use std::{fs, thread, time::Duration};

use super::tracefs;

/// The names of the tick's hrtimer function, in the order to look for
/// them. 6.10 renamed `tick_sched_timer` to `tick_nohz_handler`, a name
/// that before then belonged to the low-resolution tick handler (no
/// hrtimer): a kernel with the old name has the old meaning of the new one.
const TICK_FUNCTIONS: [&str; 2] = ["tick_sched_timer", "tick_nohz_handler"];
/// The HZ values Linux offers (`kernel/Kconfig.hz`).
const HZ_CHOICES: [u64; 4] = [100, 250, 300, 1000];
/// How long jiffies are counted when the config does not say HZ.
const HZ_MEASURE: Duration = Duration::from_millis(100);

/// A tick the sampler can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// The tick's hrtimer function.
    pub function: u64,
    /// Offset of `function` in the `hrtimer_expire_entry` record.
    pub function_off: u16,
    /// Ticks per second (the kernel's HZ).
    pub hz: u64,
}

/// The tick, or why it cannot drive the sampler on this kernel.
pub fn probe() -> Result<Tick, String> {
    if !tracefs::has_tracepoint("timer", "hrtimer_expire_entry") {
        return Err("no timer:hrtimer_expire_entry tracepoint".into());
    }
    let function_off = tracefs::field_offset("timer", "hrtimer_expire_entry", "function")
        .map_err(|e| e.to_string())?;
    let list = fs::read_to_string("/proc/timer_list")
        .map_err(|e| format!("reading /proc/timer_list: {e}"))?;
    if !all_high_res(&list) {
        return Err("high-resolution timers are off on some CPU (the tick is no hrtimer)".into());
    }
    if let Ok(cpus) = fs::read_to_string("/sys/devices/system/cpu/nohz_full") {
        let cpus = cpus.trim();
        if !cpus.is_empty() && cpus != "(null)" {
            return Err(format!("CPUs {cpus} are nohz_full (their tick stops)"));
        }
    }
    let syms =
        fs::read_to_string("/proc/kallsyms").map_err(|e| format!("reading /proc/kallsyms: {e}"))?;
    let function =
        tick_function(&syms).ok_or("no tick function with a visible address in /proc/kallsyms")?;
    let hz = configured_hz().map_or_else(|| measured_hz(&list), Ok)?;
    Ok(Tick {
        function,
        function_off,
        hz,
    })
}

/// Whether every CPU in a /proc/timer_list runs high-resolution timers.
fn all_high_res(list: &str) -> bool {
    let mut flags = list
        .lines()
        .filter_map(|l| l.trim().strip_prefix(".hres_active"))
        .map(|rest| rest.trim_start_matches([' ', ':']).trim() == "1")
        .peekable();
    flags.peek().is_some() && flags.all(|on| on)
}

/// The address of the tick's hrtimer function in a /proc/kallsyms text
/// (`addr type name [module]`); None when absent or hidden (all zeroes).
fn tick_function(kallsyms: &str) -> Option<u64> {
    // One pass over the (megabytes of) symbols, each name's address kept.
    let mut found = [None; TICK_FUNCTIONS.len()];
    for line in kallsyms.lines() {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(_kind), Some(name), None) = (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if let Some(i) = TICK_FUNCTIONS.iter().position(|want| *want == name) {
            found[i] = u64::from_str_radix(addr, 16).ok().filter(|&a| a != 0);
        }
    }
    found.into_iter().flatten().next()
}

/// `CONFIG_HZ` from the running kernel's config in /boot, where the
/// distribution puts it.
fn configured_hz() -> Option<u64> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let config = fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()?;
    hz_in_config(&config)
}

fn hz_in_config(config: &str) -> Option<u64> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
        .filter(|hz| HZ_CHOICES.contains(hz))
}

/// HZ from how far jiffies move in [`HZ_MEASURE`] after `first` (a
/// /proc/timer_list just read), by its `now at … nsecs` and `jiffies: …`,
/// rounded to the nearest choice.
fn measured_hz(first: &str) -> Result<u64, String> {
    let no_jiffies = || "/proc/timer_list shows no jiffies".to_string();
    let (t0, j0) = clock_and_jiffies(first).ok_or_else(no_jiffies)?;
    thread::sleep(HZ_MEASURE);
    let list = fs::read_to_string("/proc/timer_list")
        .map_err(|e| format!("reading /proc/timer_list: {e}"))?;
    let (t1, j1) = clock_and_jiffies(&list).ok_or_else(no_jiffies)?;
    nearest_hz(j1.saturating_sub(j0), t1.saturating_sub(t0))
        .ok_or_else(|| format!("jiffies moved {} in {} ns: no HZ fits", j1 - j0, t1 - t0))
}

fn clock_and_jiffies(list: &str) -> Option<(u64, u64)> {
    let mut now = None;
    let mut jiffies = None;
    for line in list.lines() {
        if now.is_none()
            && let Some(rest) = line.strip_prefix("now at ")
        {
            now = rest.split_whitespace().next()?.parse().ok();
        }
        if jiffies.is_none()
            && let Some(rest) = line.strip_prefix("jiffies: ")
        {
            jiffies = rest.trim().parse().ok();
        }
    }
    Some((now?, jiffies?))
}

/// The HZ choice within 10 % of `jiffies` per `ns`.
fn nearest_hz(jiffies: u64, ns: u64) -> Option<u64> {
    if ns == 0 {
        return None;
    }
    let rate = jiffies as f64 * 1e9 / ns as f64;
    HZ_CHOICES
        .into_iter()
        .find(|&hz| (rate - hz as f64).abs() <= hz as f64 * 0.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_function_is_found_by_either_name() {
        let new = "ffffffff814352e0 t tick_nohz_handler\nffffffff81000000 T _text\n";
        assert_eq!(tick_function(new), Some(0xffffffff814352e0));
        // Before 6.10 tick_nohz_handler is the low-resolution handler.
        let old = "ffffffffa1000100 t tick_nohz_handler\nffffffffa1000000 t tick_sched_timer\n";
        assert_eq!(tick_function(old), Some(0xffffffffa1000000));
        // Hidden by kptr_restrict, or a module's symbol of the same name.
        assert_eq!(
            tick_function("0000000000000000 t tick_nohz_handler\n"),
            None
        );
        assert_eq!(
            tick_function("ffffffffc0000000 t tick_sched_timer [kvm]\n"),
            None
        );
    }

    #[test]
    fn every_cpu_must_run_high_res_timers() {
        assert!(all_high_res(
            "  .hres_active    : 1\n  .hres_active    : 1\n"
        ));
        assert!(!all_high_res(
            "  .hres_active    : 1\n  .hres_active    : 0\n"
        ));
        assert!(!all_high_res("Timer List Version: v0.10\n"));
    }

    #[test]
    fn hz_comes_from_the_config_or_the_jiffies() {
        assert_eq!(
            hz_in_config("# c\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"),
            Some(250)
        );
        assert_eq!(hz_in_config("CONFIG_HZ=123\n"), None);
        let list = "Timer List Version: v0.10\nnow at 715456734589 nsecs\n\njiffies: 4295073160\n";
        assert_eq!(clock_and_jiffies(list), Some((715456734589, 4295073160)));
        assert_eq!(nearest_hz(25, 100_000_000), Some(250));
        assert_eq!(nearest_hz(26, 100_000_000), Some(250));
        assert_eq!(nearest_hz(30, 100_000_000), Some(300));
        assert_eq!(nearest_hz(101, 100_000_000), Some(1000));
        assert_eq!(nearest_hz(60, 100_000_000), None);
    }
}
