// swift-tools-version: 6.1
import PackageDescription

// Layers (bottom to top): C shims → TensorFile (format) → Imaging, Checkpoint → Compute → SubjectDelta
// → Diffusion, Hypernetwork → Training → CLI.
// Lower layers never import higher ones.
let package = Package(
    name: "lidb",
    products: [
        .library(name: "TensorFile", targets: ["TensorFile"]),
        .library(name: "Imaging", targets: ["Imaging"]),
        .executable(name: "lidb", targets: ["lidb"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        // System libraries from Debian packages, wrapped through pkg-config.
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CJPEG", pkgConfig: "libjpeg", providers: [.apt(["libjpeg62-turbo-dev"])]),
        // Small C kernels that Swift cannot express efficiently (hardware CRC32C).
        .target(name: "CLidbSupport"),
        // libpng/libjpeg decoding with their longjmp error handling kept inside C.
        .target(name: "CImagingSupport", dependencies: ["CPNG", "CJPEG"]),
        // CLIP's BPE vocabulary (zstd frames taken in with #embed), so single-file checkpoints
        // convert to complete bases without a resource bundle. converters/embed_vocabulary.py.
        .target(name: "CEmbeddedVocabulary", exclude: ["clip-vocab.json.zst", "clip-merges.txt.zst"]),

        .target(
            name: "TensorFile",
            dependencies: ["CZstd", "CLidbSupport"]
        ),
        // Image input: PNG/JPEG decoding with limits, EXIF orientation, encoder preprocessing.
        .target(
            name: "Imaging",
            dependencies: ["TensorFile", "CImagingSupport"]
        ),
        // Base checkpoints: diffusers folders, LDM single files, name maps, base.lidb, export.
        .target(
            name: "Checkpoint",
            dependencies: ["TensorFile", "CEmbeddedVocabulary", "CZstd", .product(name: "Crypto", package: "swift-crypto")]
        ),
        // Kernels and typed layers, forward and backward (input gradients, delta-term gradients).
        // oneDNN's matmul behind one C call (batched, strided products: attention).
        .target(name: "CLidbDNNL"),
        .target(name: "Compute", dependencies: ["CBLAS", "CLidbSupport", "CLidbDNNL"]),
        // Subject deltas: LiDB parameterisation, portable bases, subject files, subjects as Compute
        // delta terms (for live application, merge/unmerge and training).
        .target(
            name: "SubjectDelta",
            dependencies: ["TensorFile", "Checkpoint", "Compute", "CLidbSupport", .product(name: "Crypto", package: "swift-crypto")]
        ),
        // The inference runtime: tokenizer, schedulers, RNG, the pipeline (text encoder and UNet
        // are Compute's networks, the VAE is built from Compute's layers), PNG out.
        .target(
            name: "Diffusion",
            dependencies: ["TensorFile", "Checkpoint", "SubjectDelta", "Compute", "CPNG"]
        ),
        // The HyperDreamBooth hypernetwork: ViT image encoder, weight decoder, subject from a photo.
        .target(
            name: "Hypernetwork",
            dependencies: ["TensorFile", "Imaging", "Checkpoint", "SubjectDelta", "Compute", .product(name: "Crypto", package: "swift-crypto")]
        ),
        // Training: the objective, optimisers, photo preprocessing and random draws of `lidb finetune`.
        .target(
            name: "Training",
            dependencies: ["TensorFile", "Imaging", "Checkpoint", "Compute", "SubjectDelta", "Diffusion", .product(name: "Crypto", package: "swift-crypto")]
        ),
        .target(
            name: "LidbCLI",
            dependencies: ["TensorFile", "Checkpoint", "Compute", "SubjectDelta", "Diffusion", "Hypernetwork", "Imaging", "Training", .product(name: "ArgumentParser", package: "swift-argument-parser"), .product(name: "Crypto", package: "swift-crypto")]
        ),
        .executableTarget(name: "lidb", dependencies: ["LidbCLI"]),

        .testTarget(
            name: "TensorFileTests",
            dependencies: ["TensorFile", .product(name: "Crypto", package: "swift-crypto")],
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "BaseTests",
            dependencies: ["Checkpoint", "TensorFile", .product(name: "Crypto", package: "swift-crypto")],
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "SubjectTests",
            dependencies: ["SubjectDelta", "Compute", "Checkpoint", "TensorFile", .product(name: "Crypto", package: "swift-crypto")],
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "DiffusionTests",
            dependencies: ["Diffusion", "Compute", "SubjectDelta", "TensorFile", "Checkpoint", "CPNG"],
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "ImagingTests",
            dependencies: ["Imaging", "TensorFile", .product(name: "Crypto", package: "swift-crypto")],
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "HypernetworkTests",
            dependencies: ["Hypernetwork", "Compute", "SubjectDelta", "Checkpoint", "TensorFile", .product(name: "Crypto", package: "swift-crypto")],
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "TrainingTests",
            dependencies: ["Training", "Diffusion", "Checkpoint", "Compute", "Imaging", "SubjectDelta", "TensorFile", .product(name: "Crypto", package: "swift-crypto")],
            exclude: ["Fixtures"]
        ),
        .testTarget(name: "CLITests", dependencies: ["TensorFile", "Imaging", "Diffusion", "lidb", .product(name: "Crypto", package: "swift-crypto")], exclude: ["Fixtures"]),
        // Also reads the backward-kernel fixtures of Tests/TrainingTests/Fixtures by path.
        .testTarget(name: "ComputeTests", dependencies: ["Compute", "TensorFile"], exclude: ["Fixtures"]),
        .testTarget(name: "SystemLibraryTests", dependencies: ["CBLAS", "CPNG", "CZstd"]),
    ]
)

// The structure-aware fuzz target for the semantic layers (Fuzz/Semantic; `bash Fuzz/run.sh` with
// FUZZ_TARGETS=semantic). It is part of the package only when LIDB_FUZZ is set, so ordinary builds
// and tests never see it; then the layers it exercises are compiled with libFuzzer's coverage and
// address sanitizer, TensorFile (fuzzed on its own by the header targets) and the C kernels with
// the sanitizer only:
//   LIDB_FUZZ=1 swift build -c release --build-path .build-fuzz --product FuzzSemantic
if Context.environment["LIDB_FUZZ"] != nil {
    let covered: Set<String> = ["Checkpoint", "Compute", "SubjectDelta", "Diffusion", "Hypernetwork", "Imaging"]
    for t in package.targets where t.type == .regular {
        if covered.contains(t.name) || t.name == "TensorFile" {
            t.swiftSettings = (t.swiftSettings ?? []) + [.unsafeFlags([covered.contains(t.name) ? "-sanitize=fuzzer,address" : "-sanitize=address"])]
        } else {
            t.cSettings = (t.cSettings ?? []) + [.unsafeFlags(["-fsanitize=address"])]
        }
    }
    package.targets.append(.executableTarget(
        name: "FuzzSemantic",
        dependencies: ["TensorFile", "Checkpoint", "Compute", "SubjectDelta", "Diffusion", "Hypernetwork", "Imaging"],
        path: "Fuzz/Semantic",
        swiftSettings: [.enableExperimentalFeature("Extern"), .unsafeFlags(["-sanitize=fuzzer,address"])],
        linkerSettings: [.unsafeFlags(["-sanitize=fuzzer,address"])]
    ))
    package.products.append(.executable(name: "FuzzSemantic", targets: ["FuzzSemantic"]))
}
