//! Stack capture shared by the sampler and the scheduler probes.
use aya_ebpf::{EbpfContext, bindings::BPF_F_USER_STACK, programs::tracing::StackIdContext};
use lagtrace_common::CTR_STACK_ERRORS;

use crate::{iteration::bump, maps::STACKS};

/// User and kernel stack ids of the current task; -1 where capture failed
/// (counted, never guessed).
#[inline(always)]
pub fn capture<C: EbpfContext + StackIdContext>(ctx: &C) -> (i32, i32) {
    let user = match ctx.get_stackid(&STACKS, BPF_F_USER_STACK.into()) {
        Ok(id) => id as i32,
        Err(_) => {
            bump(CTR_STACK_ERRORS);
            -1
        }
    };
    let kernel = match ctx.get_stackid(&STACKS, 0) {
        Ok(id) => id as i32,
        Err(_) => {
            bump(CTR_STACK_ERRORS);
            -1
        }
    };
    (user, kernel)
}
