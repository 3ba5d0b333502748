import CLidbSupport
import Testing
@testable import Compute

/// The OpenBLAS wait setting refuses exponents outside OpenBLAS's 4…30 without touching the
/// process (applying it restarts OpenBLAS's threads, which a test process running products on
/// other threads must not do; the command line applies it at start, before any product).
@Suite struct ParallelTests {
    @Test func blasWaitRefusesExponentsOutOfRange() {
        #expect(lidb_blas_short_wait(3) == -1)
        #expect(lidb_blas_short_wait(31) == -1)
        #expect(lidb_blas_short_wait(-8) == -1)
    }
}
