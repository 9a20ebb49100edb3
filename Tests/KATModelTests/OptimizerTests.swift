import XCTest
@testable import KATModel
import KATSupport

final class OptimizerTests: XCTestCase {
    let cfg = GPT2Config(vocabSize: 7, nPositions: 4, nEmbd: 4, nLayer: 1, nHead: 2)

    /// AdamW against the update written out by hand in Double, with weight decay on
    /// matrices only and clipping by the global norm.
    func testAdamWMatchesHandComputation() throws {
        let layout = ParameterLayout(config: cfg)
        var oc = OptimizerConfig()
        oc.lr = 0.01; oc.weightDecay = 0.1; oc.gradClip = 0.5
        let opt = Optimizer(config: oc, layout: layout)
        let p = FloatBuffer(count: layout.count), g = FloatBuffer(count: layout.count)
        var rng = SplitMix64(seed: 1)
        for i in 0..<p.count { p[i] = rng.nextGaussian(); g[i] = rng.nextGaussian() }
        var pd = p.array.map(Double.init), md = [Double](repeating: 0, count: p.count), vd = md
        for step in 1...3 {
            for i in 0..<g.count { g[i] = rng.nextGaussian() }
            let gd = g.array.map(Double.init)
            let norm = gd.reduce(0) { $0 + $1 * $1 }.squareRoot()
            let s = norm > 0.5 ? 0.5 / norm : 1
            let reported = opt.step(params: p, grads: g, lr: 0.01)
            XCTAssertEqual(Double(reported), norm, accuracy: 1e-4 * norm, "norm is measured before clipping")
            for t in layout.tensors {
                for i in t.offset..<(t.offset + t.count) {
                    let gi = gd[i] * s
                    md[i] = 0.9 * md[i] + 0.1 * gi
                    vd[i] = 0.999 * vd[i] + 0.001 * gi * gi
                    let mh = md[i] / (1 - pow(0.9, Double(step))), vh = vd[i] / (1 - pow(0.999, Double(step)))
                    pd[i] -= 0.01 * (mh / (vh.squareRoot() + 1e-8) + (t.decays ? 0.1 * pd[i] : 0))
                }
            }
        }
        // Float32 state over three steps: differences stay near 1e-7 of values O(1).
        for i in 0..<p.count { XCTAssertEqual(Double(p[i]), pd[i], accuracy: 1e-5, "param \(i)") }
        XCTAssertFalse(layout.tensor(named: "transformer.h.0.ln_1.weight")!.decays)
        XCTAssertFalse(layout.tensor(named: "transformer.h.0.attn.c_attn.bias")!.decays)
        XCTAssertTrue(layout.tensor(named: "transformer.wpe.weight")!.decays)
    }

    func testSGDStep() {
        let layout = ParameterLayout(config: cfg)
        var oc = OptimizerConfig()
        oc.kind = .sgd; oc.gradClip = 0
        let opt = Optimizer(config: oc, layout: layout)
        let p = FloatBuffer(count: layout.count), g = FloatBuffer(count: layout.count)
        for i in 0..<p.count { p[i] = Float(i % 5); g[i] = Float(i % 3) - 1 }
        let before = p.array
        opt.step(params: p, grads: g, lr: 0.5)
        for i in 0..<p.count { XCTAssertEqual(p[i], before[i] - 0.5 * g[i]) }
        XCTAssertEqual(opt.m.count, 0, "SGD keeps no moments")
    }

    func testScheduleWarmupThenCosineToTenPercent() {
        var oc = OptimizerConfig()
        oc.lr = 1; oc.warmupSteps = 4; oc.schedule = .cosine
        XCTAssertEqual(oc.learningRate(step: 0, totalSteps: 14), 0.25)
        XCTAssertEqual(oc.learningRate(step: 3, totalSteps: 14), 1)
        XCTAssertEqual(oc.learningRate(step: 4, totalSteps: 14), 1)
        XCTAssertEqual(oc.learningRate(step: 9, totalSteps: 14), 0.55, accuracy: 1e-6)
        XCTAssertEqual(oc.learningRate(step: 14, totalSteps: 14), 0.1, accuracy: 1e-6)
        oc.schedule = .constant
        XCTAssertEqual(oc.learningRate(step: 9, totalSteps: 14), 1)
    }

    func testInitializationIsSeededAndScaled() throws {
        let c = GPT2Config(vocabSize: 260, nPositions: 64, nEmbd: 64, nLayer: 4, nHead: 4)
        let a = try GPT2(config: c), b = try GPT2(config: c)
        a.initialize(seed: 5); b.initialize(seed: 5)
        XCTAssertEqual(a.params.array, b.params.array)
        func std(_ name: String) -> Double {
            let t = a.layout.tensor(named: name)!
            let xs = (0..<t.count).map { Double(a.params[t.offset + $0]) }
            return (xs.reduce(0) { $0 + $1 * $1 } / Double(xs.count)).squareRoot()
        }
        // 16k-65k samples: the sample std is within ~1% of the true one.
        XCTAssertEqual(std("transformer.h.0.attn.c_attn.weight"), 0.02, accuracy: 0.0006)
        XCTAssertEqual(std("transformer.h.2.mlp.c_proj.weight"), 0.02 / (8.0).squareRoot(), accuracy: 0.0003)
        XCTAssertEqual(a.params[a.layout.tensor(named: "transformer.ln_f.weight")!.offset], 1)
        XCTAssertEqual(a.params[a.layout.tensor(named: "transformer.h.1.mlp.c_fc.bias")!.offset], 0)
    }
}
