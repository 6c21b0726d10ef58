//! EAL initialisation, lcores and the time-stamp counter.

use std::ffi::{c_int, c_void, CString};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{check, DpdkError};

static EAL_STARTED: AtomicBool = AtomicBool::new(false);

/// The initialised Environment Abstraction Layer. There is at most one per
/// process; dropping it runs `rte_eal_cleanup`, so drop it last, after every
/// port and mempool.
#[derive(Debug)]
pub struct Eal {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Eal {
    /// Runs `rte_eal_init` with `args` (`args[0]` is the program name).
    ///
    /// # Errors
    /// When EAL was already initialised in this process, an argument holds a
    /// NUL byte, or DPDK rejects the arguments or cannot get its memory.
    pub fn init<S: AsRef<str>>(args: &[S]) -> Result<Eal, DpdkError> {
        if EAL_STARTED.swap(true, Ordering::SeqCst) {
            return Err(DpdkError {
                call: "rte_eal_init",
                errno: EALREADY,
                context: "EAL is already initialised in this process".into(),
            });
        }
        let owned: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_ref()))
            .collect::<Result<_, _>>()
            .map_err(|_| DpdkError {
                call: "rte_eal_init",
                errno: 22,
                context: "an EAL argument contains a NUL byte".into(),
            })?;
        // DPDK may permute argv, so it gets its own array of pointers into `owned`,
        // which outlives the call.
        let mut argv: Vec<*mut std::ffi::c_char> =
            owned.iter().map(|a| a.as_ptr().cast_mut()).collect();
        let argc = c_int::try_from(argv.len()).expect("argument count fits in c_int");
        super::log::route_to_tracing();
        // SAFETY: argv holds argc valid NUL-terminated strings that live until
        // after the call; EAL is initialised at most once (checked above) and
        // from the main thread, as DPDK requires.
        let ret = unsafe { dpdk_sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if ret < 0 {
            EAL_STARTED.store(false, Ordering::SeqCst);
            return Err(DpdkError::from_rte_errno(
                "rte_eal_init",
                args.iter()
                    .skip(1)
                    .map(|a| a.as_ref())
                    .collect::<Vec<_>>()
                    .join(" "),
            ));
        }
        Ok(Eal {
            _not_send: std::marker::PhantomData,
        })
    }

    /// The lcore that called `rte_eal_init` (the main lcore).
    pub fn main_lcore(&self) -> LcoreId {
        // SAFETY: EAL is initialised (we hold `Eal`); a pure getter.
        LcoreId(unsafe { dpdk_sys::rte_get_main_lcore() })
    }

    /// The NUMA socket of an lcore.
    pub fn lcore_socket(&self, lcore: LcoreId) -> u32 {
        // SAFETY: EAL is initialised; out-of-range ids return an error value, not UB.
        unsafe { dpdk_sys::rte_lcore_to_socket_id(lcore.0) }
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: the owner drops `Eal` after its ports and pools (documented
        // contract of this type); nothing uses DPDK afterwards.
        let ret = unsafe { dpdk_sys::rte_eal_cleanup() };
        if let Err(err) = check("rte_eal_cleanup", ret, String::new) {
            tracing::warn!(%err, "EAL cleanup");
        }
    }
}

/// Linux's EALREADY.
const EALREADY: i32 = 114;

/// An EAL logical core id. Prints as `lcore3`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LcoreId(pub u32);

impl fmt::Debug for LcoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lcore{}", self.0)
    }
}

impl fmt::Display for LcoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl LcoreId {
    /// The lcore the calling thread runs on, or `None` on a non-EAL thread.
    pub fn current() -> Option<LcoreId> {
        // SAFETY: reads a thread-local; valid on any thread.
        let id = unsafe { dpdk_sys::shim_rte_lcore_id() };
        (id != u32::MAX).then_some(LcoreId(id))
    }
}

/// The enabled worker lcores (all enabled lcores but the main one), in order.
pub fn worker_lcores(_eal: &Eal) -> Vec<LcoreId> {
    let mut out = Vec::new();
    // SAFETY: EAL is initialised; rte_get_next_lcore only reads the lcore config.
    let mut id = unsafe { dpdk_sys::rte_get_next_lcore(u32::MAX, 1, 0) };
    while id < dpdk_sys::RTE_MAX_LCORE {
        out.push(LcoreId(id));
        // SAFETY: as above.
        id = unsafe { dpdk_sys::rte_get_next_lcore(id, 1, 0) };
    }
    out
}

type Job = Box<dyn FnOnce() -> i32 + Send + 'static>;

unsafe extern "C" fn trampoline(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Box<Job>` leaked by `launch_on_lcore` for exactly
    // this one call; we take ownership back here.
    let job: Box<Job> = unsafe { Box::from_raw(arg.cast::<Job>()) };
    // A panic must not unwind into DPDK's C frames.
    catch_unwind(AssertUnwindSafe(job)).unwrap_or_else(|_| {
        tracing::error!("a worker lcore panicked");
        -1
    })
}

/// A function running on a worker lcore; `wait` joins it.
#[derive(Debug)]
#[must_use = "a launched lcore must be waited for"]
pub struct LaunchHandle {
    lcore: LcoreId,
}

impl LaunchHandle {
    /// Blocks until the lcore's function returns, and returns its result.
    pub fn wait(self) -> i32 {
        // SAFETY: the lcore was launched by us; rte_eal_wait_lcore blocks on its state.
        unsafe { dpdk_sys::rte_eal_wait_lcore(self.lcore.0) }
    }

    /// The lcore this handle waits for.
    pub fn lcore(&self) -> LcoreId {
        self.lcore
    }
}

/// Runs `job` on a worker lcore (`rte_eal_remote_launch`).
///
/// # Errors
/// When the lcore is not a worker lcore or is already busy.
pub fn launch_on_lcore<F>(_eal: &Eal, lcore: LcoreId, job: F) -> Result<LaunchHandle, DpdkError>
where
    F: FnOnce() -> i32 + Send + 'static,
{
    let boxed: Box<Job> = Box::new(Box::new(job));
    let arg = Box::into_raw(boxed).cast::<c_void>();
    // SAFETY: `trampoline` matches lcore_function_t and takes ownership of
    // `arg` when, and only when, the launch succeeds.
    let ret = unsafe { dpdk_sys::rte_eal_remote_launch(Some(trampoline), arg, lcore.0) };
    if ret < 0 {
        // SAFETY: the launch failed, so the trampoline never ran and `arg` is still ours.
        drop(unsafe { Box::from_raw(arg.cast::<Job>()) });
        return Err(DpdkError::from_ret(
            "rte_eal_remote_launch",
            ret,
            lcore.to_string(),
        ));
    }
    Ok(LaunchHandle { lcore })
}

/// Reads the CPU time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no preconditions.
    unsafe { dpdk_sys::shim_rte_rdtsc() }
}

/// Time-stamp counter ticks per second, as measured by EAL.
pub fn tsc_hz() -> u64 {
    // SAFETY: a getter of a value EAL computed at init; returns 0 before init.
    unsafe { dpdk_sys::rte_get_tsc_hz() }
}
