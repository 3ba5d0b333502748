import TensorFile

/// Which Stable Diffusion family a checkpoint belongs to, and the structural facts the name maps
/// need (loop bounds and block kinds), read from tensor names and shapes.
public struct Architecture: Sendable, Equatable, CustomStringConvertible {
    public enum Family: String, Sendable { case sd1, sd2 }
    public var family: Family
    /// UNet input channels: 4 for text-to-image, 9 for inpainting.
    public var unetInChannels: Int
    public var unetLayersPerBlock: Int
    public var downAttention: [Bool]
    public var upAttention: [Bool]
    public var vaeBlocks: Int
    public var vaeLayersPerBlock: Int
    public var textLayers: Int

    public var isInpainting: Bool { unetInChannels == 9 }
    public var description: String {
        "\(family == .sd1 ? "SD 1.x" : "SD 2.x")\(isInpainting ? " inpainting" : "") (UNet: \(downAttention.count) blocks × \(unetLayersPerBlock) layers; text encoder: \(textLayers) layers)"
    }

    /// Refuses structural counts outside spec/base.md §2.1 (they bound the name maps' loops and
    /// every model built from the base), naming the config field.
    public func checkRanges(file: String) throws(TensorFileError) {
        func check(_ ok: Bool, _ field: String, _ expected: String) throws(TensorFileError) {
            guard ok else { throw TensorFileError(file: file, .wrongType(field: field, expected: expected)) }
        }
        try check((1...8).contains(downAttention.count), "components.unet.config.down_block_types", "a list of 1…8 block types (found \(downAttention.count))")
        try check(upAttention.count == downAttention.count, "components.unet.config.up_block_types",
                  "as many block types as down_block_types (\(downAttention.count); found \(upAttention.count))")
        try check((1...64).contains(unetLayersPerBlock), "components.unet.config.layers_per_block", "an integer in 1…64 (found \(unetLayersPerBlock))")
        try check(unetInChannels == 4 || unetInChannels == 9, "components.unet.config.in_channels", "4 (text-to-image) or 9 (inpainting) (found \(unetInChannels))")
        try check((1...8).contains(vaeBlocks), "components.vae.config.block_out_channels", "a list of 1…8 integers (found \(vaeBlocks))")
        try check((1...64).contains(vaeLayersPerBlock), "components.vae.config.layers_per_block", "an integer in 1…64 (found \(vaeLayersPerBlock))")
        try check((1...256).contains(textLayers), "components.text_encoder.config.num_hidden_layers", "an integer in 1…256 (found \(textLayers))")
    }

    /// The variables of the name-map expressions.
    public var mapVariables: [String: ExprValue] {
        [
            "L": .int(unetLayersPerBlock), "down": .int(downAttention.count), "up": .int(upAttention.count),
            "down_attn": .array(downAttention.map { $0 ? 1 : 0 }), "up_attn": .array(upAttention.map { $0 ? 1 : 0 }),
            "vae_blocks": .int(vaeBlocks), "vae_L": .int(vaeLayersPerBlock), "text_layers": .int(textLayers),
        ]
    }

    /// Detects the architecture of a single-file checkpoint in the original LDM layout.
    /// Throws `unsupportedFormat` naming what was found for SDXL, SD3, Flux and anything unknown.
    public static func detectLDM(_ tensors: [TensorInfo], file: String) throws(TensorFileError) -> Architecture {
        func fail(_ m: String) -> TensorFileError { TensorFileError(file: file, .unsupportedFormat(m)) }
        let names = Set(tensors.map(\.name))
        let shape = Dictionary(tensors.map { ($0.name, $0.shape) }, uniquingKeysWith: { a, _ in a })
        let u = "model.diffusion_model."
        if names.contains(where: { $0.hasPrefix("conditioner.embedders.") }) || names.contains(u + "label_emb.0.0.weight") {
            throw fail("not supported yet: SDXL (found conditioner.embedders / label_emb)")
        }
        if names.contains(where: { $0.hasPrefix(u + "joint_blocks.") }) { throw fail("not supported yet: SD3 (found joint_blocks)") }
        if names.contains(where: { $0.hasPrefix(u + "double_blocks.") || $0.hasPrefix("double_blocks.") }) { throw fail("not supported yet: Flux (found double_blocks)") }
        guard let convIn = shape[u + "input_blocks.0.0.weight"], convIn.count == 4 else {
            if names.contains(where: { $0.hasPrefix("unet.") || $0.hasPrefix("down_blocks.") }) {
                throw fail("tensors use diffusers names; convert the diffusers folder instead of a single file")
            }
            throw fail("not a Stable Diffusion checkpoint: no \(u)input_blocks.0.0.weight")
        }
        let family: Family
        if names.contains(where: { $0.hasPrefix("cond_stage_model.transformer.") }) {
            family = .sd1
        } else if names.contains(where: { $0.hasPrefix("cond_stage_model.model.") }) {
            family = .sd2
        } else {
            throw fail("no text encoder found (expected cond_stage_model.transformer.* for SD 1.x or cond_stage_model.model.* for SD 2.x)")
        }
        // UNet: down blocks = downsamplers + 1; input_blocks = down × (L + 1).
        func indices(_ prefix: String) -> Set<Int> {
            var s = Set<Int>()
            for n in names where n.hasPrefix(prefix) {
                let rest = n.dropFirst(prefix.count)
                if let dot = rest.firstIndex(of: "."), let i = Int(rest[..<dot]) { s.insert(i) }
            }
            return s
        }
        let inputs = indices(u + "input_blocks.")
        let downsamplers = inputs.filter { names.contains(u + "input_blocks.\($0).0.op.weight") }.count
        let down = downsamplers + 1
        guard inputs.count % down == 0, inputs.count / down >= 2 else { throw fail("unrecognised UNet layout (\(inputs.count) input blocks, \(downsamplers) downsamplers)") }
        let L = inputs.count / down - 1
        let outputs = indices(u + "output_blocks.")
        guard outputs.count % (L + 1) == 0 else { throw fail("unrecognised UNet layout (\(outputs.count) output blocks)") }
        let up = outputs.count / (L + 1)
        let downAttn = (0..<down).map { b in names.contains { $0.hasPrefix(u + "input_blocks.\(1 + b * (L + 1)).1.") } }
        let upAttn = (0..<up).map { b in names.contains { $0.hasPrefix(u + "output_blocks.\(b * (L + 1)).1.") } }
        // VAE.
        let v = "first_stage_model."
        let vaeBlocks = indices(v + "encoder.down.").count
        let vaeL = indices(v + "encoder.down.0.block.").count
        guard vaeBlocks > 0, vaeL > 0 else { throw fail("no VAE found (first_stage_model.encoder.down.*)") }
        // Text encoder layers.
        let textLayers = family == .sd1
            ? indices("cond_stage_model.transformer.text_model.encoder.layers.").count
            : indices("cond_stage_model.model.transformer.resblocks.").count
        guard textLayers > 0 else { throw fail("the text encoder has no layers") }
        let inCh = convIn[1]
        guard inCh == 4 || inCh == 9 else { throw fail("not supported yet: a UNet with \(inCh) input channels (4: text-to-image, 9: inpainting)") }
        return Architecture(family: family, unetInChannels: inCh, unetLayersPerBlock: L, downAttention: downAttn, upAttention: upAttn,
                            vaeBlocks: vaeBlocks, vaeLayersPerBlock: vaeL, textLayers: textLayers)
    }
}
