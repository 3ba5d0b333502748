import Foundation

/// The numeric building blocks of the diffusers schedulers, each reproducing the torch or numpy
/// operation diffusers uses, down to the order and precision of every rounding:
///
/// - `torch.linspace(..., dtype=float32)` on CPU: `start + step * i` below the halfway index and
///   `end - step * (steps - 1 - i)` above it, each a fused multiply-add (how torch's kernel is
///   compiled for x86-64 and arm64), with `step = (end - start) / (steps - 1)` in float32.
/// - `torch.cumprod` of float32 on CPU: the running product in float64, rounded per element.
/// - `np.linspace`, `np.arange` (float steps), `np.round` (half to even), `np.interp` in float64.
/// - diffusers' `_sigma_to_t` and `_convert_to_karras`, in numpy's mix of float64 and float32.
///
/// Square roots are correctly rounded (`Float.squareRoot`), logarithms and exponentials go
/// through the platform libm in float64 and are rounded to float32. torch's CPU float32 sqrt,
/// log and exp (MKL's vector math in the pinned build) and numpy's SIMD float32 log are not
/// correctly rounded, so values that pass through them can differ from diffusers' in the last
/// float32 bit; everything else here is bit-exact.
enum SchedulerMath {
    static func torchLinspace(_ start: Float, _ end: Float, _ steps: Int) -> [Float] {
        if steps <= 0 { return [] }
        if steps == 1 { return [start] }
        let step = (end - start) / Float(steps - 1)
        let halfway = steps / 2
        return (0..<steps).map { i in
            i < halfway ? start.addingProduct(step, Float(i)) : end.addingProduct(-step, Float(steps - 1 - i))
        }
    }

    static func torchCumprod(_ x: [Float]) -> [Float] {
        var acc = 1.0
        return x.map { v in
            acc *= Double(v)
            return Float(acc)
        }
    }

    /// diffusers' `betas_for_alpha_bar` with the cosine transform (beta_schedule "squaredcos_cap_v2").
    static func betasForAlphaBarCosine(_ n: Int, maxBeta: Double = 0.999) -> [Float] {
        func alphaBar(_ t: Double) -> Double { pow(cos((t + 0.008) / 1.008 * Double.pi / 2), 2) }
        return (0..<n).map { i in
            let t1 = Double(i) / Double(n), t2 = Double(i + 1) / Double(n)
            return Float(min(1 - alphaBar(t2) / alphaBar(t1), maxBeta))
        }
    }

    /// `np.linspace(start, stop, num)` (float64, endpoint included).
    static func npLinspace(_ start: Double, _ stop: Double, _ num: Int) -> [Double] {
        if num <= 0 { return [] }
        let div = num - 1
        let delta = stop - start
        var y: [Double]
        if div > 0 {
            let step = delta / Double(div)
            if step == 0 {
                y = (0..<num).map { Double($0) / Double(div) * delta }
            } else {
                y = (0..<num).map { Double($0) * step }
            }
        } else {
            y = (0..<num).map { Double($0) * delta }
        }
        y = y.map { $0 + start }
        if num > 1 { y[num - 1] = stop }
        return y
    }

    /// `np.arange(start, stop, step)` for float64: the first two values, then `start + i * delta`
    /// with `delta` the difference of the first two (numpy's fill).
    static func npArange(_ start: Double, _ stop: Double, _ step: Double) -> [Double] {
        let len = ((stop - start) / step).rounded(.up)
        guard len > 0 else { return [] }
        let n = Int(len)
        var out = [start]
        if n > 1 { out.append(start + step) }
        let delta = n > 1 ? out[1] - out[0] : 0
        if n > 2 { for i in 2..<n { out.append(start + Double(i) * delta) } }
        return out
    }

    /// `np.round`: half to even.
    static func npRound(_ x: Double) -> Double { x.rounded(.toNearestOrEven) }

    /// `np.interp(x, np.arange(len(fp)), fp)` with float32 `fp`, computed in float64.
    static func npInterp(_ x: Double, _ fp: [Float]) -> Double {
        let n = fp.count
        if x.isNaN { return x }
        if x >= Double(n - 1) { return Double(fp[n - 1]) }
        if x < 0 { return Double(fp[0]) }
        let j = Int(x.rounded(.down))
        if Double(j) == x { return Double(fp[j]) }
        let slope = (Double(fp[j + 1]) - Double(fp[j])) / (Double(j + 1) - Double(j))
        return slope * (x - Double(j)) + Double(fp[j])
    }

    /// `np.log` of a float32 value, as float32 (see the type's note on libm).
    static func logf32(_ x: Float) -> Float { Float(log(Double(x))) }

    /// diffusers' `_sigma_to_t`: the fractional training timestep of `sigma`, interpolating
    /// linearly in log sigma between the two neighbouring training sigmas.
    /// `logSigmas` is `np.log(sigmas)` of the float32 training sigmas (float32).
    static func sigmaToT(_ sigma: Double, logSigmas: [Float]) -> Double {
        // One training timestep: it is the only one (diffusers' numpy wraps index −1 onto it and
        // computes 0/0; its int64 cast makes that 0).
        guard logSigmas.count >= 2 else { return 0 }
        let logSigma = log(max(sigma, 1e-10))
        // argmax of cumsum(dists >= 0): the last index whose log sigma is <= logSigma, else 0.
        var low = 0
        for (i, l) in logSigmas.enumerated() where logSigma - Double(l) >= 0 { low = i }
        low = min(low, logSigmas.count - 2)
        let high = low + 1
        let lo = logSigmas[low], hi = logSigmas[high]
        var w = (Double(lo) - logSigma) / Double(lo - hi)
        w = min(max(w, 0), 1)
        return (1 - w) * Double(low) + w * Double(high)
    }

    /// diffusers' `_convert_to_karras` (rho 7), in float64.
    static func karrasSigmas(sigmaMin: Double, sigmaMax: Double, count: Int) -> [Double] {
        let rho = 7.0
        let ramp = npLinspace(0, 1, count)
        let minInvRho = pow(sigmaMin, 1 / rho)
        let maxInvRho = pow(sigmaMax, 1 / rho)
        return ramp.map { pow(maxInvRho + $0 * (minInvRho - maxInvRho), rho) }
    }

    /// Timesteps for `count` inference steps out of `train` training steps, per spacing, as
    /// DDIM, PNDM and the Euler schedulers compute them (before any reordering), in float64.
    /// `linspace`: `np.linspace(0, train - 1, count).round()`; `leading`:
    /// `arange(count) * (train // count) + offset`; `trailing`: `np.arange(train, 0, -train / count).round() - 1`.
    /// Each list is in descending order.
    static func spacedTimesteps(_ spacing: TimestepSpacing, train: Int, count: Int, offset: Int, roundLinspace: Bool = true) -> [Double] {
        switch spacing {
        case .linspace:
            let v = npLinspace(0, Double(train - 1), count)
            return (roundLinspace ? v.map(npRound) : v).reversed()
        case .leading:
            let ratio = train / count
            return (0..<count).reversed().map { Double($0 * ratio + offset) }
        case .trailing:
            return npArange(Double(train), 0, -(Double(train) / Double(count))).map { npRound($0) - 1 }
        }
    }
}

/// diffusers' `index_for_timestep` for the sigma-based schedulers: the position of `timestep`
/// in `timesteps`, the second one when it occurs more than once (so image-to-image, which starts
/// in the middle of a schedule, does not skip a sigma), nil when it does not occur.
func indexForTimestep(_ timestep: Double, in timesteps: [Double]) -> Int? {
    let matches = timesteps.indices.filter { timesteps[$0] == timestep }
    if matches.isEmpty { return nil }
    return matches.count > 1 ? matches[1] : matches[0]
}

/// Elementwise helpers on equal-length float32 arrays.
@inline(__always)
func map2(_ a: [Float], _ b: [Float], _ f: (Float, Float) -> Float) -> [Float] {
    precondition(a.count == b.count, "tensors of different sizes (\(a.count) and \(b.count))")
    return [Float](unsafeUninitializedCapacity: a.count) { buf, n in
        a.withUnsafeBufferPointer { pa in
            b.withUnsafeBufferPointer { pb in
                for i in 0..<pa.count { buf[i] = f(pa[i], pb[i]) }
            }
        }
        n = a.count
    }
}

@inline(__always)
func map1(_ a: [Float], _ f: (Float) -> Float) -> [Float] {
    [Float](unsafeUninitializedCapacity: a.count) { buf, n in
        a.withUnsafeBufferPointer { pa in
            for i in 0..<pa.count { buf[i] = f(pa[i]) }
        }
        n = a.count
    }
}

/// The Euler schedulers' shared bookkeeping: which sigma a timestep is at, and the model input
/// `sample / sqrt(sigma² + 1)` (diffusers' `_init_step_index` and `scale_model_input`).
protocol SigmaIndexed {
    var timesteps: [Double] { get }
    var sigmas: [Float] { get }
    var stepIndex: Int? { get set }
    var beginIndex: Int? { get }
}

extension SigmaIndexed {
    mutating func initStepIndex(_ timestep: Double) {
        if let b = beginIndex { stepIndex = b; return }
        guard let i = indexForTimestep(timestep, in: timesteps) else {
            preconditionFailure("timestep \(timestep) is not in the schedule")
        }
        stepIndex = i
    }

    mutating func scaledBySigma(_ sample: [Float], timestep: Double) -> [Float] {
        if stepIndex == nil { initStepIndex(timestep) }
        let sigma = sigmas[stepIndex!]
        let d = (sigma * sigma + 1).squareRoot()
        return map1(sample) { $0 / d }
    }
}
