import CBLAS
import CLidbSupport
import Dispatch
import Synchronization

/// Runs independent evaluations on all cores: one per core with single-threaded BLAS inside
/// (two BLAS threads per evaluation on top of two concurrent evaluations would oversubscribe
/// the cores). With a single job, BLAS keeps its own threads, and the elementwise kernels split
/// their work over the cores themselves (`ranges`).
public enum Parallel {
    public static var cores: Int { Int(openblas_get_num_procs()) }

    /// Read once by the models' initialisers: configures the allocator to keep freed memory
    /// (large activations are freed and reallocated every step).
    public static let allocatorConfigured: Bool = { lidb_keep_freed_memory(); return true }()

    /// OpenBLAS's worker threads (pthreads build) spin for about 2^28 cycles after each product
    /// before they sleep, taking the cores from the runtime's own threads (normalisations,
    /// attention heads, Winograd transforms) between products. This shortens the wait to 2^8
    /// cycles (a 512×512 training step on 2 cores: 14.4 s instead of 16.4 s). Process-wide: call
    /// it once, before any BLAS work, from one thread — the command line does at start. A user's
    /// own OPENBLAS_THREAD_TIMEOUT stands. True when applied.
    @discardableResult
    public static func shortenBLASWait() -> Bool { lidb_blas_short_wait(8) == 1 }

    /// Hands memory freed to the allocator back to the kernel: after a network's weights are
    /// released, so the next stage's peak does not sit on top of them.
    public static func returnFreedMemory() { _ = lidb_return_freed_memory() }

    /// How many `forEach` regions with more than one job are running.
    static let regions = Atomic<Int>(0)

    /// Inside another region (e.g. an attention's heads within one of two concurrent UNet
    /// evaluations) the jobs run in turn on the calling thread: the cores are taken already.
    public static func forEach(_ jobs: Int, _ body: @Sendable (Int) -> Void) {
        if jobs <= 1 || regions.load(ordering: .sequentiallyConsistent) > 0 {
            for j in 0..<max(jobs, 0) { body(j) }
            return
        }
        let saved = openblas_get_num_threads()
        openblas_set_num_threads(1)
        regions.add(1, ordering: .sequentiallyConsistent)
        DispatchQueue.concurrentPerform(iterations: jobs, execute: body)
        regions.subtract(1, ordering: .sequentiallyConsistent)
        openblas_set_num_threads(saved)
    }

    /// Calls `body` on disjoint ranges covering `0..<count`: one range per core when no batch
    /// parallelism is running and the job (`work` values touched) is large enough to pay for the
    /// threads, otherwise the whole range on the calling thread.
    public static func ranges(_ count: Int, work: Int, _ body: @Sendable (Range<Int>) -> Void) {
        guard count > 0 else { return }
        let n = min(cores, count)
        if n <= 1 || work < 1 << 16 || regions.load(ordering: .sequentiallyConsistent) > 0 {
            body(0..<count)
            return
        }
        DispatchQueue.concurrentPerform(iterations: n) { i in body((count * i / n)..<(count * (i + 1) / n)) }
    }
}

/// A raw pointer handed to the threads of `Parallel`, each touching a disjoint part.
public struct UnsafeSendable<T>: @unchecked Sendable {
    public let p: T
    public init(_ p: T) { self.p = p }
}
