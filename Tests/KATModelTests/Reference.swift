import Foundation
@testable import KATModel

/// An independent GPT-2 forward in Float64 with plain loops: no BLAS, no segments, no
/// chunking. Attention walks each token's root path through the parent pointers.
struct ReferenceGPT2 {
    let config: GPT2Config
    let layout: ParameterLayout
    var p: [Double]

    init(_ model: GPT2) {
        config = model.config
        layout = model.layout
        p = model.params.array.map(Double.init)
    }

    /// Next-token log-probs and entropies at temperature `tau`, indexed like PackedBatch
    /// rows (0 at roots), plus the logits of every row.
    func forward(tokens: [Int], parents: [Int], tau: Double) -> (logprobs: [Double], entropies: [Double], logits: [[Double]]) {
        let n = tokens.count, c = config.nEmbd, nh = config.nHead, hs = c / nh, v = config.vocabSize
        var depth = [Int](repeating: 0, count: n)
        for i in 0..<n where parents[i] >= 0 { depth[i] = depth[parents[i]] + 1 }
        var x = (0..<n).map { i in (0..<c).map { j in p[layout.wte + tokens[i] * c + j] + p[layout.wpe + depth[i] * c + j] } }
        func layerNorm(_ x: [Double], _ w: Int, _ b: Int) -> [Double] {
            let m = x.reduce(0, +) / Double(c)
            let varc = x.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(c)
            let s = 1 / (varc + 1e-5).squareRoot()
            return (0..<c).map { j in (x[j] - m) * s * p[w + j] + p[b + j] }
        }
        func linear(_ x: [Double], _ w: Int, _ b: Int, _ inDim: Int, _ outDim: Int) -> [Double] {
            (0..<outDim).map { o in
                var s = p[b + o]
                for i in 0..<inDim { s += x[i] * p[w + i * outDim + o] }
                return s
            }
        }
        func gelu(_ x: Double) -> Double { 0.5 * x * (1 + tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x))) }
        for o in layout.layers {
            let h = x.map { layerNorm($0, o.ln1w, o.ln1b) }
            let qkv = h.map { linear($0, o.attnw, o.attnb, c, 3 * c) }
            var att = [[Double]](repeating: [Double](repeating: 0, count: c), count: n)
            for i in 0..<n {
                var path: [Int] = []
                var a = i
                while a >= 0 { path.append(a); a = parents[a] }
                for hd in 0..<nh {
                    var scores = path.map { j -> Double in
                        var s = 0.0
                        for d in 0..<hs { s += qkv[i][hd * hs + d] * qkv[j][c + hd * hs + d] }
                        return s / Double(hs).squareRoot()
                    }
                    let mx = scores.max()!
                    scores = scores.map { exp($0 - mx) }
                    let z = scores.reduce(0, +)
                    for (k, j) in path.enumerated() {
                        for d in 0..<hs { att[i][hd * hs + d] += scores[k] / z * qkv[j][2 * c + hd * hs + d] }
                    }
                }
            }
            for i in 0..<n {
                let proj = linear(att[i], o.attprojw, o.attprojb, c, c)
                for j in 0..<c { x[i][j] += proj[j] }
                let h2 = layerNorm(x[i], o.ln2w, o.ln2b)
                let f = linear(h2, o.fcw, o.fcb, c, 4 * c).map(gelu)
                let m = linear(f, o.fcprojw, o.fcprojb, 4 * c, c)
                for j in 0..<c { x[i][j] += m[j] }
            }
        }
        let logits = x.map { row -> [Double] in
            let h = layerNorm(row, layout.lnfw, layout.lnfb)
            return (0..<v).map { t in (0..<c).reduce(0.0) { $0 + h[$1] * p[layout.wte + t * c + $1] } }
        }
        var lp = [Double](repeating: 0, count: n), ent = [Double](repeating: 0, count: n)
        for u in 0..<n where parents[u] >= 0 {
            let z = logits[parents[u]].map { $0 / tau }
            let mx = z.max()!
            let lse = mx + log(z.reduce(0) { $0 + exp($1 - mx) })
            lp[u] = z[tokens[u]] - lse
            ent[u] = -z.reduce(0) { $0 + exp($1 - lse) * ($1 - lse) }
        }
        return (lp, ent, logits)
    }
}
