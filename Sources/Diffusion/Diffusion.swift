/// The embedded inference runtime: tokenizer, text encoder, UNet, VAE, schedulers, RNG.
/// (Built up component by component; each component has its own file and tests.)
public enum DiffusionRuntime {
    public static let name = "lidb diffusion runtime"
}

// `Parallel` (threads and the batch-parallel region counter) lives in Compute; re-exported so
// that modules still reaching it through Diffusion (Hypernetwork's kernels, the CLI's bench)
// use the one shared instance until they import Compute themselves.
@_exported import enum Compute.Parallel
