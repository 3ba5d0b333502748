import Testing
@testable import Compute

/// diffusers `ResnetBlock2D` (group norm + SiLU, 3×3 convolutions, time projection, 1×1
/// shortcut) against PyTorch autograd: gradients at the input and at the time embedding.
@Suite struct ResnetBlockTests {
    @Test func resnetBlock() throws {
        let f = try KernelFixtures.load(), name = "resnet"
        let (i, o, t, groups) = (try f.config(name, "in"), try f.config(name, "out"), try f.config(name, "temb"), try f.config(name, "groups"))
        let eps = Float(try f.configDouble(name, "eps"))
        func gn(_ p: String, _ c: Int) throws -> GroupNorm {
            try GroupNorm(groups: groups, channels: c, eps: eps, weight: try f.param(name, p + ".weight"), bias: try f.param(name, p + ".bias"), silu: true)
        }
        func conv(_ p: String, _ inC: Int, _ k: Int) throws -> Conv2d {
            try Conv2d(weight: try f.param(name, p + ".weight"), bias: try f.param(name, p + ".bias"), out: o, in: inC, kernel: k, padding: k / 2)
        }
        let block = try ResnetBlock2D(norm1: try gn("norm1", i), conv1: try conv("conv1", i, 3),
                                      timeEmbProj: try Linear(weight: try f.param(name, "time_emb_proj.weight"), bias: try f.param(name, "time_emb_proj.bias"),
                                                              out: o, in: t),
                                      norm2: try gn("norm2", o), conv2: try conv("conv2", o, 3), shortcut: try conv("conv_shortcut", i, 1))
        let s = try f.inputShape(name)
        let x = try FeatureMap(c: s[1], h: s[2], w: s[3], data: try f.input(name))
        let temb = try Matrix(rows: 1, cols: t, data: try f.input(name, "temb"))
        let y = try block.forward(x, temb: temb)
        expectClose(y.data, try f.output(name), "resnet y")
        let gy = try FeatureMap(c: o, h: y.h, w: y.w, data: try f.upstream(name))
        let (gx, gt) = try block.backward(gradOutput: gy, input: x, temb: temb)
        expectClose(gx.data, try f.grad(name), "resnet grad x")
        expectClose(gt.data, try f.grad(name, "temb"), "resnet grad temb")
        // From the middle map a training forward keeps: the same output and gradients, bit for
        // bit (the recomputation it replaces is the same arithmetic); a mis-sized map is refused.
        let kept = try block.forwardKeeping(x, temb: temb)
        #expect(kept.output.data == y.data && kept.middle.c == o)
        let k = try block.backward(gradOutput: gy, input: x, temb: temb, middle: kept.middle)
        #expect(k.input.data == gx.data && k.temb.data == gt.data)
        let wrong = try FeatureMap(c: o, h: x.h + 1, w: x.w, data: [Float](repeating: 0, count: o * (x.h + 1) * x.w))
        #expect(throws: ComputeError.self) { try block.backward(gradOutput: gy, input: x, temb: temb, middle: wrong) }
    }
}
