//! Off-CPU accounting by tp_btf where the kernel takes it: `sched_switch`
//! and `sched_wakeup` fire for every context switch and wakeup on the host,
//! and tp_btf skips the trace record the classic tracepoints format first
//! (see `lagtrace-ebpf/src/probes/sched_btf.rs`). `--attach tracepoints`
//! keeps the classic ones, as does any failure here. `--attach exit-tp`
//! takes the wait-aware `sched_switch_btf_wait`, which also ends the
//! iteration of a loop thread falling asleep in an epoll wait.
use aya::{Btf, programs::BtfTracePoint};

use super::Probes;

/// The wait-aware sched_switch of `--attach exit-tp`.
const WAIT_SWITCH: &str = "sched_switch_btf_wait";

impl Probes {
    /// Attach the tp_btf sched programs, the wait-aware sched_switch if
    /// `waits` (and it loads), or say why not; a failure leaves nothing
    /// attached.
    pub(super) fn attach_sched_btf(&mut self, waits: bool) -> Result<(), String> {
        if !self.features.tp_btf || !self.task_offsets_known {
            return Err("no tp_btf or no task_struct offsets in BTF".into());
        }
        let btf = Btf::from_sys_fs().map_err(|e| format!("reading kernel BTF: {e}"))?;
        // The walker variant needs bpf_loop; without it the frame-pointer
        // one (the perf sampler makes the same choice on its own).
        let plain = if self.features.bpf_loop {
            "sched_switch_btf"
        } else {
            "sched_switch_btf_fp"
        };
        let switch = match waits.then(|| self.load_switch(WAIT_SWITCH, &btf)) {
            Some(Ok(())) => WAIT_SWITCH,
            refused => {
                if let Some(Err(why)) = refused {
                    log::info!("{why}: the iterations will be hooked another way");
                    self.sched_waits_refused = Some(why);
                }
                self.load_switch(plain, &btf)?;
                plain
            }
        };
        let link = {
            let p: &mut BtfTracePoint = self.program(switch).map_err(|e| e.to_string())?;
            p.attach().map_err(|e| format!("attaching {switch}: {e}"))?
        };
        let wakeup = (|| {
            let p: &mut BtfTracePoint = self
                .program("sched_wakeup_btf")
                .map_err(|e| e.to_string())?;
            p.load("sched_wakeup", &btf)
                .map_err(|e| format!("loading sched_wakeup_btf: {e}"))?;
            p.attach()
                .map(drop)
                .map_err(|e| format!("attaching sched_wakeup_btf: {e}"))
        })();
        if let Err(why) = wakeup {
            if let Ok(p) = self.program::<BtfTracePoint>(switch) {
                let _ = p.detach(link);
            }
            return Err(why);
        }
        self.attached
            .push("tp_btf:sched_switch, tp_btf:sched_wakeup".into());
        log::info!("off-CPU: tp_btf sched_switch and sched_wakeup ({switch})");
        if switch == WAIT_SWITCH {
            self.sched_waits_refused = None;
        }
        Ok(())
    }

    /// Load the sched_switch program `name` against the kernel's BTF.
    fn load_switch(&mut self, name: &str, btf: &Btf) -> Result<(), String> {
        let p: &mut BtfTracePoint = self.program(name).map_err(|e| e.to_string())?;
        p.load("sched_switch", btf)
            .map_err(|e| format!("loading {name}: {e}"))
    }
}
