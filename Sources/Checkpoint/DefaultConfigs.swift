import TensorFile

/// Diffusers configurations of the released SD 1.5 and SD 2.1 pipelines: the defaults for a
/// single-file checkpoint, whose file does not carry them. Fields that can be read from the
/// tensors (channels, layer counts, context width, in/out channels) are then taken from the file.
enum DefaultConfigs {
    static func unet(_ f: Architecture.Family) -> JSONValue {
        let sd2 = f == .sd2
        return parse("""
        {"_class_name":"UNet2DConditionModel","act_fn":"silu","attention_head_dim":\(sd2 ? "[5,10,20,20]" : "8"),
        "block_out_channels":[320,640,1280,1280],"center_input_sample":false,"cross_attention_dim":\(sd2 ? 1024 : 768),
        "down_block_types":["CrossAttnDownBlock2D","CrossAttnDownBlock2D","CrossAttnDownBlock2D","DownBlock2D"],
        "downsample_padding":1,"dual_cross_attention":false,"flip_sin_to_cos":true,"freq_shift":0,"in_channels":4,
        "layers_per_block":2,"mid_block_scale_factor":1,"norm_eps":1e-05,"norm_num_groups":32,"out_channels":4,
        "sample_size":\(sd2 ? 96 : 64),"up_block_types":["UpBlock2D","CrossAttnUpBlock2D","CrossAttnUpBlock2D","CrossAttnUpBlock2D"],
        "use_linear_projection":\(sd2),"upcast_attention":\(sd2)}
        """)
    }

    static func vae(_ f: Architecture.Family) -> JSONValue {
        parse("""
        {"_class_name":"AutoencoderKL","act_fn":"silu","block_out_channels":[128,256,512,512],
        "down_block_types":["DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D"],
        "in_channels":3,"latent_channels":4,"layers_per_block":2,"norm_num_groups":32,"out_channels":3,
        "sample_size":\(f == .sd2 ? 768 : 512),"scaling_factor":0.18215,
        "up_block_types":["UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D"]}
        """)
    }

    static func textEncoder(_ f: Architecture.Family) -> JSONValue {
        let sd2 = f == .sd2
        return parse("""
        {"architectures":["CLIPTextModel"],"attention_dropout":0.0,"bos_token_id":0,"eos_token_id":2,"pad_token_id":1,
        "hidden_act":"\(sd2 ? "gelu" : "quick_gelu")","hidden_size":\(sd2 ? 1024 : 768),"initializer_factor":1.0,
        "initializer_range":0.02,"intermediate_size":\(sd2 ? 4096 : 3072),"layer_norm_eps":1e-05,
        "max_position_embeddings":77,"model_type":"clip_text_model","num_attention_heads":\(sd2 ? 16 : 12),
        "num_hidden_layers":\(sd2 ? 23 : 12),"projection_dim":\(sd2 ? 512 : 768),"vocab_size":49408}
        """)
    }

    static func scheduler(_ f: Architecture.Family, prediction: String) -> JSONValue {
        if f == .sd2 {
            return parse("""
            {"_class_name":"DDIMScheduler","beta_end":0.012,"beta_schedule":"scaled_linear","beta_start":0.00085,
            "clip_sample":false,"num_train_timesteps":1000,"prediction_type":"\(prediction)","set_alpha_to_one":false,
            "skip_prk_steps":true,"steps_offset":1,"trained_betas":null}
            """)
        }
        return parse("""
        {"_class_name":"PNDMScheduler","beta_end":0.012,"beta_schedule":"scaled_linear","beta_start":0.00085,
        "clip_sample":false,"num_train_timesteps":1000,"prediction_type":"\(prediction)","set_alpha_to_one":false,
        "skip_prk_steps":true,"steps_offset":1,"trained_betas":null}
        """)
    }

    static func parse(_ s: String) -> JSONValue {
        // These literals are part of the program; a failure here is a programming error.
        guard let v = try? JSONValue.parse(Array(s.utf8), file: "built-in config") else { fatalError("bad built-in config") }
        return v
    }
}

