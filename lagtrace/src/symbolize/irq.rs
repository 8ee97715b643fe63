//! A sample taken on the scheduler tick (`SAMPLE_F_IN_IRQ`) has a kernel
//! stack walked from inside the timer interrupt: the interrupt's own
//! frames (hrtimer_interrupt, the tracepoint…) sit on top of the code it
//! interrupted. They say nothing about the loop, and left in they would be
//! the hottest kernel code of every span. This cuts them off at the
//! interrupt's entry, as a clock sample's stack (walked from the
//! interrupted registers) never had them.
use super::{Frame, FrameKind};

/// Where the kernel enters an interrupt: x86-64's entry stubs since 5.8
/// (`asm_sysvec_apic_timer_interrupt`, `asm_common_interrupt`), and the
/// single timer stub before.
fn is_interrupt_entry(f: &Frame) -> bool {
    f.kind == FrameKind::Kernel
        && (f.function.starts_with("asm_sysvec_")
            || f.function == "asm_common_interrupt"
            || f.function == "apic_timer_interrupt")
}

/// Kernel frames (outermost first) of a tick sample, without the
/// interrupt's: those below its innermost entry, none when the tick came
/// in user mode. With no entry in the stack (a walk that did not leave the
/// interrupt's stack) every frame is the interrupt's, and none is kept.
pub fn interrupted(mut kernel: Vec<Frame>) -> Vec<Frame> {
    let keep = kernel.iter().rposition(is_interrupt_entry).unwrap_or(0);
    kernel.truncate(keep);
    kernel
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(names: &[&str]) -> Vec<Frame> {
        names.iter().map(|n| Frame::kernel(*n)).collect()
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(|f| f.function.as_str()).collect()
    }

    #[test]
    fn the_interrupts_frames_go_and_the_interrupted_code_stays() {
        let in_syscall = k(&[
            "entry_SYSCALL_64_after_hwframe",
            "do_syscall_64",
            "__x64_sys_read",
            "asm_sysvec_apic_timer_interrupt",
            "sysvec_apic_timer_interrupt",
            "hrtimer_interrupt",
            "__hrtimer_run_queues",
        ]);
        assert_eq!(
            names(&interrupted(in_syscall)),
            [
                "entry_SYSCALL_64_after_hwframe",
                "do_syscall_64",
                "__x64_sys_read"
            ]
        );
        let in_user = k(&["asm_sysvec_apic_timer_interrupt", "hrtimer_interrupt"]);
        assert!(interrupted(in_user).is_empty());
        assert!(interrupted(k(&["hrtimer_interrupt", "__hrtimer_run_queues"])).is_empty());
    }
}
