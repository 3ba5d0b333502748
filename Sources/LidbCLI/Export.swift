import ArgumentParser
import Checkpoint
import TensorFile

enum ExportFormat: String, ExpressibleByArgument, CaseIterable {
    case diffusers
    case singleFile = "single-file"
}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a base back out in the ecosystem's layouts.",
        discussion: """
        --format diffusers writes a diffusers pipeline folder (model_index.json, unet/, vae/, \
        text_encoder/, tokenizer/, scheduler/; weights as safetensors) that \
        StableDiffusionPipeline.from_pretrained loads. --format single-file writes one \
        .safetensors file with the original LDM/CompVis names (model.diffusion_model.*, \
        first_stage_model.*, cond_stage_model.*), including tensors kept aside on import. \
        Weights keep the base's dtype; the output appears only when complete.
        """
    )

    @Argument(help: "A base .lidb file.") var base: String
    @Option(help: "diffusers or single-file.") var format: ExportFormat
    @Option(name: .shortAndLong, help: "Output folder (diffusers) or .safetensors file (single-file).") var output: String

    func run() throws {
        if format == .diffusers { try checkOutputFolder(output, inputs: [base]) } else { try checkOutput(output, inputs: [base]) }
        try reportingErrors {
            let model = try BaseModel(path: base)
            let progress = Progress("exporting")
            switch format {
            case .diffusers:
                try BaseExporter.exportDiffusers(model, to: output, progress: progress.update)
            case .singleFile:
                guard output.hasSuffix(".safetensors") else {
                    throw TensorFileError(file: output, .unsupportedFormat("single-file export writes .safetensors"))
                }
                try BaseExporter.exportSingleFile(model, to: output, progress: progress.update)
            }
            progress.finish()
            print("wrote \(output) (\(format.rawValue), \(model.architecture))")
        }
    }
}
