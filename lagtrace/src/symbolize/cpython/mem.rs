//! Reads of a target's memory with `process_vm_readv`: no ptrace stop, and
//! every read bounded by the caller. Bytes read here come from a process
//! lagtrace does not trust; callers cap lengths and loops.
use std::io;

/// The memory of one process.
#[derive(Clone, Copy, Debug)]
pub struct Mem {
    pub pid: u32,
}

impl Mem {
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes `buf`, which we own mutably for the call;
        // the kernel checks `remote` against the target's address space.
        let n =
            unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize != buf.len() => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            _ => Ok(()),
        }
    }

    pub fn array<const N: usize>(&self, addr: u64) -> io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.read(addr, &mut b)?;
        Ok(b)
    }

    pub fn u64(&self, addr: u64) -> io::Result<u64> {
        self.array(addr).map(u64::from_le_bytes)
    }

    pub fn u32(&self, addr: u64) -> io::Result<u32> {
        self.array(addr).map(u32::from_le_bytes)
    }

    pub fn u8(&self, addr: u64) -> io::Result<u8> {
        self.array::<1>(addr).map(|b| b[0])
    }
}
