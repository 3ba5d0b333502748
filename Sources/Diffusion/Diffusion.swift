/// The embedded inference runtime: tokenizer, text encoder, UNet, VAE, schedulers, RNG.
/// (Built up component by component; each component has its own file and tests.)
public enum DiffusionRuntime {
    public static let name = "lidb diffusion runtime"
}

