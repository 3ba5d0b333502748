import CLidbSupport

/// Rows of features, `[rows × cols]` row-major: tokens × channels, or any 2-D activation.
public struct Matrix: Sendable, Equatable {
    public var rows: Int, cols: Int
    public var data: [Float]

    /// Wraps `data`; its count must be `rows · cols`.
    public init(rows: Int, cols: Int, data: [Float]) throws(ComputeError) {
        let n = try Size.product(rows, cols, what: "matrix \(rows) × \(cols)")
        guard data.count == n else { throw ComputeError("matrix \(rows) × \(cols) needs \(n) values, got \(data.count)") }
        self.rows = rows; self.cols = cols; self.data = data
    }

    /// A matrix of zeros.
    public init(zeros rows: Int, cols: Int) throws(ComputeError) {
        let n = try Size.product(rows, cols, what: "matrix \(rows) × \(cols)")
        self.rows = rows; self.cols = cols; data = [Float](repeating: 0, count: n)
    }

    /// For results whose shape the layer has checked already.
    init(checkedRows rows: Int, cols: Int, data: [Float]) {
        self.rows = rows; self.cols = cols; self.data = data
    }

    /// A matrix whose values the caller writes before reading (shape checked by the caller).
    init(uninitializedRows rows: Int, cols: Int) {
        self.rows = rows; self.cols = cols
        data = [Float](unsafeUninitializedCapacity: rows * cols) { _, n in n = rows * cols }
    }

    /// Throws unless `data` holds `rows · cols` values and both fit BLAS's 32-bit sizes.
    func validate(_ what: @autoclosure () -> String, cols expected: Int? = nil) throws(ComputeError) {
        let n = try Size.product(rows, cols, what: what())
        guard data.count == n else { throw ComputeError("\(what()): \(rows) × \(cols) needs \(n) values, got \(data.count)") }
        if let expected, cols != expected { throw ComputeError("\(what()): \(cols) features, expected \(expected)") }
        _ = try Size.blas(rows, what: what())
        _ = try Size.blas(cols, what: what())
    }

    /// `self += other` (same shape).
    public mutating func add(_ other: Matrix) throws(ComputeError) {
        guard rows == other.rows, cols == other.cols, data.count == other.data.count else {
            throw ComputeError("matrix sum: \(rows) × \(cols) and \(other.rows) × \(other.cols)")
        }
        addInPlace(&data, other.data)
    }
}

/// An image-shaped activation: `[channels, height, width]` for one batch item, row-major.
public struct FeatureMap: Sendable, Equatable {
    public var c: Int, h: Int, w: Int
    public var data: [Float]

    /// Wraps `data`; its count must be `c · h · w`.
    public init(c: Int, h: Int, w: Int, data: [Float]) throws(ComputeError) {
        let n = try Size.product(c, h, w, what: "feature map \(c) × \(h) × \(w)")
        guard data.count == n else { throw ComputeError("feature map \(c) × \(h) × \(w) needs \(n) values, got \(data.count)") }
        self.c = c; self.h = h; self.w = w; self.data = data
    }

    /// A map of zeros.
    public init(zerosC c: Int, h: Int, w: Int) throws(ComputeError) {
        let n = try Size.product(c, h, w, what: "feature map \(c) × \(h) × \(w)")
        self.c = c; self.h = h; self.w = w; data = [Float](repeating: 0, count: n)
    }

    /// A map whose values the caller writes before reading (shape checked by the caller).
    init(uninitializedC c: Int, h: Int, w: Int) {
        self.c = c; self.h = h; self.w = w
        data = [Float](unsafeUninitializedCapacity: c * h * w) { _, n in n = c * h * w }
    }

    init(checkedC c: Int, h: Int, w: Int, data: [Float]) {
        self.c = c; self.h = h; self.w = w; self.data = data
    }

    /// Throws unless `data` holds `c · h · w` values (and, when given, `c` is `channels`).
    func validate(_ what: @autoclosure () -> String, channels: Int? = nil) throws(ComputeError) {
        let n = try Size.product(c, h, w, what: what())
        guard data.count == n else { throw ComputeError("\(what()): \(c) × \(h) × \(w) needs \(n) values, got \(data.count)") }
        if let channels, c != channels { throw ComputeError("\(what()): \(c) channels, expected \(channels)") }
        _ = try Size.blas(c, what: what())
        _ = try Size.blas(try Size.product(h, w, what: what()), what: what())
    }

    /// `self += other` (same shape).
    public mutating func add(_ other: FeatureMap) throws(ComputeError) {
        guard c == other.c, h == other.h, w == other.w, data.count == other.data.count else {
            throw ComputeError("feature map sum: \(c) × \(h) × \(w) and \(other.c) × \(other.h) × \(other.w)")
        }
        addInPlace(&data, other.data)
    }

    /// `[c, h, w]` → `[h·w, c]` tokens.
    public func tokens() throws(ComputeError) -> Matrix {
        try validate("feature map to tokens")
        let hw = h * w
        var t = Matrix(uninitializedRows: hw, cols: c)
        data.withUnsafeBufferPointer { src in t.data.withUnsafeMutableBufferPointer { dst in
            if let s = src.baseAddress, let d = dst.baseAddress { lidb_transpose(s, d, c, hw) }
        } }
        return t
    }

    /// Tokens `[h·w, c]` back to a map.
    public init(tokens t: Matrix, h: Int, w: Int) throws(ComputeError) {
        let hw = try Size.product(h, w, what: "feature map from tokens")
        try t.validate("feature map from tokens")
        guard t.rows == hw else { throw ComputeError("feature map from tokens: \(t.rows) tokens for \(h) × \(w)") }
        self.init(uninitializedC: t.cols, h: h, w: w)
        let c = t.cols
        t.data.withUnsafeBufferPointer { src in data.withUnsafeMutableBufferPointer { dst in
            if let s = src.baseAddress, let d = dst.baseAddress { lidb_transpose(s, d, hw, c) }
        } }
    }
}

/// `y += x` elementwise (same counts, checked by the caller).
func addInPlace(_ y: inout [Float], _ x: [Float]) {
    let n = min(y.count, x.count)
    y.withUnsafeMutableBufferPointer { yp in x.withUnsafeBufferPointer { xp in
        if let yb = yp.baseAddress, let xb = xp.baseAddress { lidb_add(yb, xb, n) }
    } }
}
