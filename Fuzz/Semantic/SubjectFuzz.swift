import Checkpoint
import Compute
import Foundation
import SubjectDelta
import TensorFile

/// (a) Subject files: a valid container (written by the library's writer, so checksums and
/// headers pass) whose layer table, factors, scales and bases are hostile; read, and when
/// accepted, checked against the tiny base, merged, unmerged, exported as LoRA and applied live.
enum SubjectFuzz {
    static func run(_ c: inout Choices, _ fx: FuzzFixtures) {
        let path = fx.path("s.lidb")
        guard build(&c, fx, to: path) else { trace("subject: the writer refused the file"); return }
        let subject: Subject
        do { subject = try Subject(path: path) } catch { trace("subject: refused: \(error)"); return }
        trace("subject: accepted, \(subject.layers.count) layer(s): " + subject.layers.map { l in
            "\(l.target.name) [\(l.target.out), \(l.target.inDim)]" + (l.lidb.map { " lidb r\($0.rank) a\($0.a) b\($0.b) alpha \($0.alpha)" } ?? "")
                + (l.lora.map { " lora r\($0.rank) alpha \($0.alpha)" } ?? "")
        }.joined(separator: "; "))
        checkReaderInvariants(subject)
        exercise(subject, &c, fx, path: path)
    }

    // MARK: Building

    struct Layer {
        var target: TargetLayer
        var lidb: (rank: Int, a: Int, b: Int)?
        var lora: Int?
    }

    static let factorTypes: [DType] = [.F32, .F16, .BF16, .I8]
    static let dtypeNames: [DType: String] = [.F32: "f32", .F16: "f16", .BF16: "bf16", .I8: "q8"]

    /// Writes a subject file from the choices; false when the writer itself refused (a name it cannot store).
    static func build(_ c: inout Choices, _ fx: FuzzFixtures, to path: String) -> Bool {
        let count = 1 + c.int(0...3)
        let dtype = c.pick(factorTypes)
        let stored = c.rarely(4)
        let seed: UInt64 = c.rarely(4) ? c.u64() : 2026
        // The layers as the data is made (small, consistent with the base unless chosen otherwise).
        var layers: [Layer] = []
        let offset = c.int(0...255)
        for i in 0..<count {
            var t: TargetLayer
            switch c.int(0...31) {
            case 28 where !fx.otherMatrices.isEmpty: t = fx.otherMatrices[(offset + i) % fx.otherMatrices.count]
            case 29: t = TargetLayer(name: c.pick(["unet.nothing", "", "text_encoder", "lidb", "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"]),
                                     out: 1 + c.int(0...15), in: 1 + c.int(0...15))
            case 30 where !layers.isEmpty: t = layers[layers.count - 1].target   // listed twice
            case 31: t = fx.targets[(offset + count - 1 - i) % fx.targets.count]       // out of base order
            default: t = fx.targets[(offset + i) % fx.targets.count]
            }
            if c.rarely(16) { t.out = 1 + c.int(0...63) }
            if c.rarely(16) { t.inDim = 1 + c.int(0...63) }
            var l = Layer(target: t)
            switch c.int(0...7) {
            case 5, 6: l.lora = 1 + c.int(0...3)
            case 7: l.lora = 1 + c.int(0...3); fallthrough
            default:
                let r = 1 + c.int(0...3)
                l.lidb = (r, 1 + c.int(0...255) % t.inDim, 1 + c.int(0...255) % t.out)
            }
            if let r = l.lora { l.lora = min(r, t.out, t.inDim) }
            layers.append(l)
        }

        // Factor values: per layer and role, from a seeded generator with hostile overrides.
        var tensors: [TensorSource] = []
        var downBlocks: [[Float]] = [], upBlocks: [[Float]] = []
        func factors(_ n: Int) -> [Float] {
            var f = Filler(&c, count: n)
            return f.values(n).map { dtype == .I8 ? ($0.isFinite && abs($0) <= 0.5 ? $0 * 254 : $0) : $0 }
        }
        for l in layers {
            if let t = l.lidb {
                downBlocks.append(factors(t.rank * t.a))
                upBlocks.append(factors(t.b * t.rank))
            }
        }
        func scales(_ name: String, blocks: Int) {
            var s = [Float](repeating: 1.0 / 254, count: blocks)
            if c.rarely(4), !s.isEmpty { s[c.int(0...255) % s.count] = c.pick(Hostile.floats) }
            let n = c.orHostile(blocks, [0, blocks + 1, max(blocks - 1, 0), 2], threshold: 240)
            if n < s.count { s.removeLast(s.count - n) } else { s += [Float](repeating: 1, count: n - s.count) }
            if !c.rarely(32) { tensors.append(.array(TensorInfo(name: name + ".scale", dtype: .F32, shape: [s.count]), floatBytes(s))) }
        }
        func factorTensor(_ name: String, _ values: [Float], shape: [Int]) {
            let d = c.rarely(32) ? c.pick([DType.F64, .I32, .U8, .F8_E4M3]) : dtype
            if d.byteSize > 0, d != .I8, !factorTypes.contains(d) {
                tensors.append(.array(TensorInfo(name: name, dtype: d, shape: shape), [UInt8](repeating: 0, count: values.count * d.byteSize)))
            } else {
                tensors.append(.array(TensorInfo(name: name, dtype: d, shape: shape), encode(values, as: d)))
            }
        }
        if !downBlocks.isEmpty {
            let down = downBlocks.flatMap { $0 }, up = upBlocks.flatMap { $0 }
            let twoD = c.rarely(16)
            if !c.rarely(32) { factorTensor("lidb.down_train", down, shape: twoD ? [1, down.count] : [down.count]) }
            if !c.rarely(32) { factorTensor("lidb.up_train", up, shape: [up.count]) }
            if dtype == .I8 {
                scales("lidb.down_train", blocks: downBlocks.count)
                scales("lidb.up_train", blocks: upBlocks.count)
            }
        }
        for l in layers {
            guard let r = l.lora else { continue }
            let t = l.target
            if !c.rarely(32) { factorTensor("lora.\(t.name).down", factors(r * t.inDim), shape: [r, t.inDim]) }
            if !c.rarely(32) { factorTensor("lora.\(t.name).up", factors(t.out * r), shape: [t.out, r]) }
            if dtype == .I8 {
                scales("lora.\(t.name).down", blocks: 1)
                scales("lora.\(t.name).up", blocks: 1)
            }
        }
        if stored {
            for l in layers {
                guard let d = l.lidb else { continue }
                let t = l.target
                var down: [Float], up: [Float]
                if c.rarely(4) {
                    down = factors(d.a * t.inDim); up = factors(t.out * d.b)
                } else if let g = try? Basis.layer(seed: seed, name: t.name, out: t.out, in: t.inDim, a: d.a, b: d.b) {
                    (down, up) = (g.down, g.up)
                } else { continue }
                var downShape = [d.a, t.inDim], upShape = [t.out, d.b]
                if c.rarely(16) { downShape = [t.inDim, d.a]; upShape = [d.b, t.out] }
                if !c.rarely(32) { tensors.append(.array(TensorInfo(name: "basis.\(t.name).down", dtype: .F32, shape: downShape), floatBytes(down))) }
                if !c.rarely(32) { tensors.append(.array(TensorInfo(name: "basis.\(t.name).up", dtype: .F32, shape: upShape), floatBytes(up))) }
            }
        }
        if c.rarely(16) { tensors.append(.array(TensorInfo(name: c.pick(["extra", "lidb.extra", "lora.x.down"]), dtype: .F32, shape: [1]), floatBytes([1]))) }

        // The layer table as declared: consistent unless a choice turns a field hostile.
        var rows: [JSONValue] = []
        var declared: [TargetLayer] = []
        for l in layers {
            let t = l.target
            // An extreme layer: every size at once from the large end (the sizes a reader multiplies),
            // each within the bounds the others set, so the table's own checks pass.
            let extreme = c.rarely(8)
            func big(_ c: inout Choices) -> Int64 { c.pick(Hostile.largeSizes) }
            var out = Hostile.integer(&c, t.out), inDim = Hostile.integer(&c, t.inDim)
            var rank = Hostile.integer(&c, l.lidb?.rank ?? l.lora ?? 1), a = JSONValue.null, b = JSONValue.null
            if let d = l.lidb { a = Hostile.integer(&c, d.a); b = Hostile.integer(&c, d.b) }
            if extreme {
                let (o, i) = (c.bool() ? big(&c) : Int64(t.out), big(&c))
                out = .int(o); inDim = .int(i)
                rank = .int(c.pick([Int64(1024), 1, 2, 4, 1025, Int64(Int32.max), o, i]))
                // a and b: the layer's own (largest allowed), another large one, or the data's (small,
                // so the factors match and only the shape is large).
                let (da, db) = (Int64(l.lidb?.a ?? 1), Int64(l.lidb?.b ?? 1))
                a = .int(c.pick([da, i, min(big(&c), i)])); b = .int(c.pick([db, o, min(big(&c), o)]))
                if l.lidb != nil, c.bool() { rank = .int(Int64(l.lidb?.rank ?? 1)) }
            }
            var shape: [JSONValue] = [out, inDim]
            switch c.int(0...63) {
            case 60: shape = [out]
            case 61: shape = [out, inDim, .int(1)]
            case 62: shape = [inDim, out]
            default: break
            }
            let name = c.rarely(64) ? Hostile.json(&c) : .string(t.name)
            var row: [(String, JSONValue)] = [("name", name), ("shape", .array(shape))]
            if let n = name.stringValue, shape.count == 2, let o = shape[0].int64Value, let i = shape[1].int64Value {
                declared.append(TargetLayer(name: n, out: Int(o), in: Int(i)))
            }
            if let d = l.lidb {
                var term: [(String, JSONValue)] = [("rank", rank), ("a", a), ("b", b), ("alpha", Hostile.double(&c, Double(d.rank)))]
                if c.rarely(32) { term.remove(at: c.int(0...3)) }
                row.append(("lidb", .object(term)))
            }
            if let r = l.lora {
                row.append(("lora", .object([("rank", l.lidb == nil ? rank : Hostile.integer(&c, r)), ("alpha", Hostile.double(&c, Double(r)))])))
            }
            if c.rarely(64) { row.append(("lidb", .object([]))) }
            rows.append(.object(row))
        }
        if c.rarely(64) { rows.append(Hostile.json(&c)) }

        var fingerprint = declared.tableFingerprint
        switch c.int(0...31) {
        case 30: fingerprint = String(repeating: "0", count: 64)
        case 31: fingerprint = layers.map(\.target).tableFingerprint
        default: break
        }
        var binding: [(String, JSONValue)] = [("architecture", .string(c.orHostile("sd1", ["sd2", "", "sdxl", "SD1"], threshold: 250)))]
        if !c.rarely(32) { binding.append(("targets_fingerprint", .string(fingerprint))) }
        switch c.int(0...15) {
        case 14: binding.append(("base_content", .string(fx.base.contentFingerprint ?? "")))
        case 15: binding.append(("base_content", .string(String(repeating: "f", count: 64))))
        default: break
        }
        let basis: JSONValue = stored
            ? .object([("stored", c.rarely(16) ? Hostile.json(&c) : .bool(true))])
            : .object([("generator", .string(c.orHostile(Basis.generatorName, ["lidb-basis-2", ""], threshold: 250))),
                       ("seed", c.rarely(16) ? .number(c.pick(Hostile.integerLiterals)) : .int(seed))])
        var trained = 0
        for b in downBlocks + upBlocks { trained += b.count }
        for l in layers { if let r = l.lora { trained += r * (l.target.inDim + l.target.out) } }
        var md: [(String, JSONValue)] = [
            ("lidb_subject", Hostile.integer(&c, 1)),
            ("targets", .string(c.orHostile("custom", ["paper", "unet-attn", ""], threshold: 240))),
            ("binding", .object(binding)),
            ("basis", basis),
            ("dtype", .string(c.orHostile(dtypeNames[dtype] ?? "f32", ["f32", "f16", "bf16", "q8", "f64", ""], threshold: 240))),
            ("trained_parameters", Hostile.integer(&c, trained)),
            ("info", .object([("name", .string("fuzz"))])),
            ("layers", .array(rows)),
        ]
        if c.rarely(64) { md.remove(at: c.int(0...255) % md.count) }
        let kind = c.orHostile("subject", ["base", "hypernetwork"], threshold: 252)
        let options = LidbWriter.Options(encoding: c.bool() ? .zstdIfSmaller(level: 1) : .raw, compressHeader: c.bool())
        do {
            trace("subject: metadata " + JSONValue.object(md).serializedString.prefix(2000) + "; tensors " + tensors.map { "\($0.info.name) \($0.info.dtype.name) \($0.info.shape)" }.joined(separator: ", "))
            try LidbWriter.write(to: path, kind: kind, metadata: .object(md), tensors: tensors, options: options)
            return true
        } catch {
            return false
        }
    }

    // MARK: Using an accepted subject

    /// What the reader promises about a subject it returns; later code indexes by these sizes.
    static func checkReaderInvariants(_ s: Subject) {
        for l in s.layers {
            let t = l.target
            oracle("reader-sizes", t.out >= 1 && t.inDim >= 1, "reader returned a layer with an empty shape")
            if let d = l.lidb {
                oracle("reader-sizes", d.rank >= 1 && d.a >= 1 && d.b >= 1 && d.a <= t.inDim && d.b <= t.out, "reader returned lidb dimensions outside the layer")
                let (nd, o1) = d.rank.multipliedReportingOverflow(by: d.a), (nu, o2) = d.b.multipliedReportingOverflow(by: d.rank)
                oracle("reader-sizes", !o1 && !o2 && d.downTrain.count == nd && d.upTrain.count == nu, "reader returned lidb factors of the wrong size")
                if case let .stored(m) = s.basis, let sb = m[t.name] {
                    oracle("reader-sizes", sb.down.count == d.a &* t.inDim && sb.up.count == t.out &* d.b, "reader returned a stored basis of the wrong size")
                }
            }
            if let r = l.lora {
                let (nd, o1) = r.rank.multipliedReportingOverflow(by: t.inDim), (nu, o2) = t.out.multipliedReportingOverflow(by: r.rank)
                oracle("reader-sizes", r.rank >= 1 && !o1 && !o2 && r.down.count == nd && r.up.count == nu, "reader returned lora factors of the wrong size")
            }
        }
    }

    static let weights: [Float] = [1, 0.5, -1, 2, 0, 1e-30, 1e30, 3e38, .nan, .infinity, -.infinity]

    static func exercise(_ subject: Subject, _ c: inout Choices, _ fx: FuzzFixtures, path: String) {
        let weight = c.orHostile(Float(1), weights, threshold: 224)
        trace("subject: weight \(weight)")
        roundTrip(subject, &c, fx)
        // Merging rewrites the whole base (its header alone is 150 KB): the slowest step, so the least frequent.
        let plan = c.int(0...7)
        // `lidb subject export` needs no base: the subject's own table decides the sizes.
        if plan == 3 || plan == 4 || plan >= 6 { export(subject, &c, fx) }
        guard plan != 3 && plan != 4 else { return }
        do { try subject.check(against: fx.base, subjectPath: path) } catch { trace("check: \(error)"); return }
        let applied = AppliedSubject(subject: subject, weight: weight, path: path)
        let cache = BasisCache()
        for l in subject.layers {
            guard let f = try? subject.lowRankFactors(l, weight: weight, cache: cache) else { continue }
            oracle("factor-sizes", f.up.count == l.target.out * f.rank && f.down.count == f.rank * l.target.inDim, "lowRankFactors returned factors of the wrong size")
        }
        switch plan {
        case 0, 1, 2: live(applied, fx)
        case 5: merge(applied, &c, fx)
        default:
            live(applied, fx)
            merge(applied, &c, fx)
        }
    }

    /// A subject written by the library reads back; in f32, with the same factors.
    static func roundTrip(_ s: Subject, _ c: inout Choices, _ fx: FuzzFixtures) {
        guard c.rarely(4) else { return }
        let dtype = c.pick(SubjectDType.allCases)
        let out = fx.path("rt.lidb")
        do { try s.write(to: out, dtype: dtype) } catch { trace("round trip: \(error)"); expectAbsent(out, "Subject.write"); return }
        let back: Subject
        do { back = try Subject(path: out) } catch { oracle("round-trip", false, "a subject written by Subject.write (\(dtype)) does not read back: \(error)"); return }
        if dtype == .f32 { oracle("round-trip", back.layers == s.layers, "an f32 subject changed on a write/read round trip") }
    }

    /// A merge that succeeds writes finite weights (the base's are finite); one that fails leaves nothing.
    static func merge(_ applied: AppliedSubject, _ c: inout Choices, _ fx: FuzzFixtures) {
        let out = fx.path("merged.lidb")
        let subjects = c.rarely(8) ? [applied, applied] : [applied]
        do {
            _ = try Merger.merge(base: fx.base, subjects: subjects, to: out)
            trace("merge: done")
        } catch {
            trace("merge: \(error)")
            expectAbsent(out, "merge")
            return
        }
        guard let merged = try? BaseModel(path: out) else { oracle("merge-opens", false, "merge wrote a base that does not open"); return }
        for l in applied.subject.layers {
            oracle("merge-finite", allFinite(merged.file, l.target.weightName), "merge wrote non-finite values into \(l.target.weightName) (weight \(applied.weight))")
        }
        guard c.rarely(4) else { return }
        let back = fx.path("unmerged.lidb")
        do {
            let summary = try Merger.unmerge(merged: merged, subjects: subjects, original: c.bool() ? fx.base : nil, to: back)
            if let b = summary.deviationBound { oracle("unmerge-finite", b.isFinite, "unmerge reported a non-finite deviation bound") }
            if let un = try? BaseModel(path: back) {
                for l in applied.subject.layers {
                    oracle("unmerge-finite", allFinite(un.file, l.target.weightName), "unmerge wrote non-finite values into \(l.target.weightName)")
                }
            }
        } catch {
            trace("unmerge: \(error)")
            expectAbsent(back, "unmerge")
        }
    }

    /// An exported LoRA holds finite values; it imports back against the same base.
    static func export(_ s: Subject, _ c: inout Choices, _ fx: FuzzFixtures) {
        let out = fx.path("lora.safetensors")
        let format = c.pick(LoRAInterop.Format.allCases)
        do { try LoRAInterop.export(s, format: format, to: out) } catch { trace("export: \(error)"); expectAbsent(out, "LoRA export"); return }
        trace("export: done (\(format))")
        guard let file = try? SafetensorsFile(path: out) else { oracle("export-opens", false, "LoRA export wrote a file that does not open"); return }
        for t in file.tensors { oracle("export-finite", allFinite(file, t.name), "LoRA export wrote non-finite values into \(t.name)") }
        guard c.bool() else { return }
        guard let (imported, _, _) = try? LoRAInterop.importLoRA(path: out, base: fx.base, ignoreUnknown: c.bool()) else { return }
        let a = c.orHostile(4, [1, 0, -1, 1 << 20, Int.max], threshold: 240), b = c.orHostile(4, [1, 0, -1, 1 << 20, Int.max], threshold: 240)
        _ = try? LoRAInterop.project(imported, seed: c.u64(), a: a, b: b)
    }

    /// Terms that build (what the runtime attaches to apply a subject live) give a finite ΔW·x
    /// for bounded x: building refuses what cannot be applied.
    static func live(_ applied: AppliedSubject, _ fx: FuzzFixtures) {
        let cache = BasisCache()
        let terms: [(layer: TargetLayer, term: LowRankTerm)]
        do {
            try applied.validate()
            try applied.subject.check(against: fx.base, subjectPath: applied.path)
            terms = try applied.subject.deltaTerms(weight: applied.weight, cache: cache)
        } catch { trace("live: \(error)"); return }
        trace("live: \(terms.count) terms")
        for l in applied.subject.layers {
            let t = l.target, rows = 2
            let x = (0..<(rows * t.inDim)).map { Float(($0 % 7) - 3) / 4 }
            guard let xm = try? Matrix(rows: rows, cols: t.inDim, data: x), var y = try? Matrix(zeros: rows, cols: t.out) else { continue }
            for term in terms where term.layer.name == t.name {
                do { try term.term.forward(xm, into: &y) } catch {
                    oracle("live-finite", false, "a delta term of \(t.name) refused an input of its own shape: \(error)")
                    return
                }
            }
            if !y.data.allSatisfy({ $0.isFinite }) {
                // A finding when ΔW is not finite (building should have refused the subject), or when
                // it is and every factor is moderate (≤ 1e15), so no intermediate of the factored
                // product can overflow for |x| ≤ 1. Factors near the f32 limit are finite and
                // accepted; their intermediates may overflow, which generation reports as a
                // non-finite latent.
                guard let f = try? applied.subject.lowRankFactors(l, weight: applied.weight, cache: cache), denseIsFinite(f, out: t.out, in: t.inDim) else {
                    oracle("live-finite", false, "live terms were built for a subject whose ΔW is not finite on \(t.name) (weight \(applied.weight))")
                    return
                }
                var raw: [Float] = f.up + f.down
                if let d = l.lidb { raw += d.downTrain + d.upTrain }
                if let r = l.lora { raw += r.down + r.up }
                if case let .stored(m) = applied.subject.basis, let b = m[t.name] { raw += b.down + b.up }
                let moderate = raw.allSatisfy { abs($0) <= 1e15 }
                oracle("live-finite", !moderate, "live ΔW·x is not finite on \(t.name) although ΔW and every factor are moderate")
                return
            }
        }
    }

    static func denseIsFinite(_ f: (up: [Float], down: [Float], rank: Int), out: Int, in inDim: Int) -> Bool {
        for o in 0..<out {
            for i in 0..<inDim {
                var s: Float = 0
                for r in 0..<f.rank { s += f.up[o * f.rank + r] * f.down[r * inDim + i] }
                if !s.isFinite { return false }
            }
        }
        return true
    }
}

/// True when every value of a floating-point tensor is finite (other types: true).
func allFinite(_ file: TensorCollection, _ name: String) -> Bool {
    guard let info = file.tensors.first(where: { $0.name == name }), info.dtype.isFloatingPoint,
          DTypeConversion.canConvert(from: info.dtype, to: .F32), let b = try? file.tensorBytes(name) else { return true }
    var v = [Float](repeating: 0, count: info.elementCount)
    v.withUnsafeMutableBytes { _ = DTypeConversion.convert(b.bytes, from: info.dtype, into: $0, to: .F32, count: info.elementCount) }
    return v.allSatisfy { $0.isFinite }
}

/// A failed write leaves no output behind.
func expectAbsent(_ path: String, _ what: String) {
    oracle("output-left", access(path, F_OK) != 0, "\(what) failed but left its output \(path)")
}
