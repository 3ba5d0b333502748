import CBLAS
import Dispatch

/// Runs independent evaluations on all cores: one per core with single-threaded BLAS inside
/// (two BLAS threads per evaluation on top of two concurrent evaluations would oversubscribe
/// the cores). With a single job, BLAS keeps its own threads.
public enum Parallel {
    public static var cores: Int { Int(openblas_get_num_procs()) }

    public static func forEach(_ jobs: Int, _ body: @Sendable (Int) -> Void) {
        if jobs <= 1 {
            for j in 0..<jobs { body(j) }
            return
        }
        let saved = openblas_get_num_threads()
        openblas_set_num_threads(1)
        DispatchQueue.concurrentPerform(iterations: jobs, execute: body)
        openblas_set_num_threads(saved)
    }
}
