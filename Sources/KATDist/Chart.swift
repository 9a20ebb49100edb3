import Foundation

/// A line chart as a self-contained SVG of fixed size: a title, a legend band above the
/// plot (never over it), "nice" ticks (1, 2 or 5 times a power of ten), one label per axis
/// with its unit, vertical markers (phase boundaries), and a note in place of the curves
/// when there is no data, so a panel keeps its size whatever the run recorded.
public struct Chart {
    public enum Marker: Sendable { case none, circle, square }

    /// One curve. `dashed` and `marker` tell curves apart beyond their colour.
    public struct Series {
        public var name: String
        public var color: String
        public var points: [(x: Double, y: Double)]
        public var dashed = false
        public var marker = Marker.none
        /// Stroke width in pixels (thinner for a noisy per-step series under a sparse one).
        public var lineWidth = 1.8

        public init(name: String, color: String, points: [(x: Double, y: Double)], dashed: Bool = false, marker: Marker = .none,
                    lineWidth: Double = 1.8) {
            self.name = name; self.color = color; self.points = points; self.dashed = dashed; self.marker = marker
            self.lineWidth = lineWidth
        }
    }

    public var title: String
    /// The y axis's label, with its unit ("seconds", "nats per token").
    public var yLabel: String
    public var xLabel = "step"
    public var series: [Series]
    /// The x range shown (the run's steps, the same on every panel); nil: the data's.
    public var xDomain: ClosedRange<Double>?
    /// A fixed y range (shares: 0...1); nil: the data's, widened to nice ticks.
    public var yDomain: ClosedRange<Double>?
    /// Whether the y range reaches down (or up) to 0: for counts, shares, norms, times.
    public var includeZero = false
    /// Stack the series as filled areas (parts of a whole, such as a time breakdown).
    public var stacked = false
    /// Vertical lines with a label (where the warm start ends).
    public var markers: [(x: Double, label: String)] = []
    /// Shown in the plot when no series has a point.
    public var emptyNote = "no data"
    public var width = 580.0
    public var height = 300.0

    public init(title: String, yLabel: String, series: [Series]) {
        self.title = title; self.yLabel = yLabel; self.series = series
    }

    // Plot area margins: room for the title and a two-row legend above, tick labels and
    // the axis labels around.
    static let left = 70.0, right = 18.0, top = 66.0, bottom = 46.0
    /// Points per series drawn at most; longer series are averaged in buckets of steps.
    static let maxPoints = 1000

    // MARK: - Ticks

    /// Ticks at 1, 2 or 5 times a power of ten covering `lo...hi`, about `target` of them.
    /// - Returns: the tick step and the ticks, from a multiple of the step at or below `lo`
    ///   to one at or above `hi`.
    public static func niceTicks(_ lo: Double, _ hi: Double, target: Int = 5) -> (step: Double, ticks: [Double]) {
        var lo = lo, hi = hi
        if !(hi > lo) {
            let pad = lo == 0 ? 1 : abs(lo) * 0.1
            lo -= pad; hi += pad
        }
        let raw = (hi - lo) / Double(max(1, target - 1))
        let power = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 5, 10].map { $0 * power }.first { $0 >= raw * (1 - 1e-9) } ?? 10 * power
        let first = floor(lo / step + 1e-9), last = ceil(hi / step - 1e-9)
        let ticks = stride(from: first, through: last, by: 1).map { ($0 * step).roundedToStep(step) }
        return (step, ticks)
    }

    /// A tick's text: as many decimals as the step needs; powers of ten for tiny steps
    /// ("5e-4", "3.92e-5": as many mantissa digits as the step needs), thousands for steps
    /// of 1000 or more ("5k", "150k").
    public static func tickLabel(_ v: Double, step: Double) -> String {
        if v == 0 { return "0" }
        if step < 1e-3 {
            let exponent = Int(floor(log10(abs(v)) + 1e-9))
            let digits = max(0, exponent - Int(floor(log10(step) + 1e-9)))
            let mantissa = v / pow(10, Double(exponent))
            return String(format: "%.\(digits)f", mantissa) + "e\(exponent)"
        }
        if step >= 1000, abs(v) < 1e15, (v / 1000).rounded() == v / 1000 { return "\(Int(v / 1000))k" }
        if abs(v) >= 1e15 { return String(format: "%.3g", v) } // a diverging run's values: no Int overflow
        let decimals = max(0, Int(-floor(log10(step) + 1e-9)))
        return String(format: "%.\(decimals)f", v)
    }

    // MARK: - Drawing

    /// The chart as an `<svg>` element of `width` x `height`.
    public func svg() -> String {
        let w = width, h = height
        let pl = Chart.left, pr = w - Chart.right, pt = Chart.top, pb = h - Chart.bottom
        let shown = series.map { s in
            Series(name: s.name, color: s.color, points: Chart.thin(s.points), dashed: s.dashed, marker: s.marker, lineWidth: s.lineWidth)
        }
        let all = shown.flatMap(\.points)
        var out = "<svg xmlns='http://www.w3.org/2000/svg' class='chart' width='\(f(w))' height='\(f(h))' viewBox='0 0 \(f(w)) \(f(h))' font-family='sans-serif'>"
        out += "<rect x='0' y='0' width='\(f(w))' height='\(f(h))' fill='#fff'/>"
        out += "<text class='title' x='\(f(pl))' y='20' font-size='14' font-weight='bold'>\(Chart.esc(title))</text>"
        out += legend(x: pl, y: 38, maxX: pr)

        // Domains: x from the caller (the run's steps), y from the data or the caller.
        let xs = all.map(\.x)
        let xLo = xDomain?.lowerBound ?? xs.min() ?? 0, xHi = xDomain?.upperBound ?? xs.max() ?? 1
        let xt = Chart.niceTicks(xLo, max(xHi, xLo + 1), target: 7)
        var yValues = all.map(\.y)
        if stacked { yValues = stackedTops(shown).map(\.y) + [0] }
        if includeZero { yValues.append(0) }
        // A flat series at 0 (no clipping, no staleness) gets the range 0 to 1.
        if includeZero, yValues.allSatisfy({ $0 == 0 }) { yValues.append(1) }
        let yt: (step: Double, ticks: [Double])
        if let d = yDomain {
            yt = Chart.niceTicks(d.lowerBound, d.upperBound, target: 6)
        } else {
            yt = Chart.niceTicks(yValues.min() ?? 0, yValues.max() ?? 1, target: 5)
        }
        let x0 = xt.ticks.first ?? 0, x1 = xt.ticks.last ?? 1, y0 = yt.ticks.first ?? 0, y1 = yt.ticks.last ?? 1
        func px(_ x: Double) -> Double { pl + (x - x0) / max(x1 - x0, 1e-300) * (pr - pl) }
        func py(_ y: Double) -> Double { pb - (y - y0) / max(y1 - y0, 1e-300) * (pb - pt) }

        out += "<rect class='plot' x='\(f(pl))' y='\(f(pt))' width='\(f(pr - pl))' height='\(f(pb - pt))' fill='#fafafa' stroke='#bbb'/>"
        for t in yt.ticks {
            out += "<line x1='\(f(pl))' x2='\(f(pr))' y1='\(f(py(t)))' y2='\(f(py(t)))' stroke='#e4e4e4'/>"
            out += "<text class='tick-y' x='\(f(pl - 6))' y='\(f(py(t) + 4))' font-size='11' text-anchor='end' fill='#333'>\(Chart.tickLabel(t, step: yt.step))</text>"
        }
        for t in xt.ticks {
            out += "<line x1='\(f(px(t)))' x2='\(f(px(t)))' y1='\(f(pb))' y2='\(f(pb + 4))' stroke='#888'/>"
            out += "<text class='tick-x' x='\(f(px(t)))' y='\(f(pb + 17))' font-size='11' text-anchor='middle' fill='#333'>\(Chart.tickLabel(t, step: xt.step))</text>"
        }
        out += "<text class='axis-x' x='\(f((pl + pr) / 2))' y='\(f(h - 8))' font-size='12' text-anchor='middle' fill='#222'>\(Chart.esc(xLabel))</text>"
        out += "<text class='axis-y' transform='translate(16 \(f((pt + pb) / 2))) rotate(-90)' font-size='12' text-anchor='middle' fill='#222'>\(Chart.esc(yLabel))</text>"

        for m in markers where m.x >= x0 && m.x <= x1 {
            out += "<line class='marker' x1='\(f(px(m.x)))' x2='\(f(px(m.x)))' y1='\(f(pt))' y2='\(f(pb))' stroke='#555' stroke-dasharray='5 4'/>"
            let anchor = px(m.x) > (pl + pr) / 2 ? "end" : "start"
            let dx = anchor == "end" ? -4.0 : 4.0
            out += "<text class='marker-label' x='\(f(px(m.x) + dx))' y='\(f(pt + 14))' font-size='11' text-anchor='\(anchor)' fill='#555' stroke='#fafafa' stroke-width='3' paint-order='stroke'>\(Chart.esc(m.label))</text>"
        }

        if all.isEmpty {
            out += "<text class='empty' x='\(f((pl + pr) / 2))' y='\(f((pt + pb) / 2))' font-size='12' text-anchor='middle' fill='#777'>\(Chart.esc(emptyNote))</text>"
            return out + "</svg>"
        }
        out += "<g clip-path='none'>"
        if stacked {
            var base = [Double: Double]()
            for s in shown where !s.points.isEmpty {
                let top = s.points.map { (x: $0.x, y: (base[$0.x] ?? 0) + $0.y) }
                let lower = s.points.map { (x: $0.x, y: base[$0.x] ?? 0) }
                let poly = (top + lower.reversed()).map { "\(f(px($0.x))),\(f(py($0.y)))" }.joined(separator: " ")
                out += "<polygon points='\(poly)' fill='\(s.color)' fill-opacity='0.75' stroke='\(s.color)' stroke-width='0.8'/>"
                for p in top { base[p.x] = p.y }
            }
        } else {
            for s in shown where !s.points.isEmpty {
                let pts = s.points.map { "\(f(px($0.x))),\(f(py($0.y)))" }.joined(separator: " ")
                let dash = s.dashed ? " stroke-dasharray='7 4'" : ""
                out += "<polyline fill='none' stroke='\(s.color)' stroke-width='\(f(s.lineWidth))'\(dash) points='\(pts)'/>"
                for p in s.points where s.marker != .none || s.points.count == 1 {
                    out += markerShape(s.marker == .none ? .circle : s.marker, x: px(p.x), y: py(p.y), color: s.color)
                }
            }
        }
        return out + "</g></svg>"
    }

    /// The legend: one entry per series (a line sample with its dash and marker, and the
    /// name), in up to two rows above the plot.
    func legend(x: Double, y: Double, maxX: Double) -> String {
        var out = "<g class='legend'>"
        var cx = x, cy = y
        for s in series {
            // A series the run did not record keeps its entry, marked so.
            let name = s.points.isEmpty && series.contains(where: { !$0.points.isEmpty }) ? s.name + " (not recorded)" : s.name
            let width = 34 + 6.6 * Double(name.count)
            if cx + width > maxX, cx > x { cx = x; cy += 16 }
            if stacked {
                out += "<rect x='\(f(cx))' y='\(f(cy - 6))' width='22' height='10' fill='\(s.color)' fill-opacity='0.75'/>"
            } else {
                let dash = s.dashed ? " stroke-dasharray='7 4'" : ""
                out += "<line x1='\(f(cx))' x2='\(f(cx + 22))' y1='\(f(cy - 1))' y2='\(f(cy - 1))' stroke='\(s.color)' stroke-width='1.8'\(dash)/>"
                if s.marker != .none { out += markerShape(s.marker, x: cx + 11, y: cy - 1, color: s.color) }
            }
            out += "<text x='\(f(cx + 27))' y='\(f(cy + 3))' font-size='11' fill='\(s.points.isEmpty ? "#888" : "#222")'>\(Chart.esc(name))</text>"
            cx += width
        }
        return out + "</g>"
    }

    func markerShape(_ m: Marker, x: Double, y: Double, color: String) -> String {
        switch m {
        case .none: return ""
        case .circle: return "<circle cx='\(f(x))' cy='\(f(y))' r='3.2' fill='\(color)'/>"
        case .square: return "<rect x='\(f(x - 3))' y='\(f(y - 3))' width='6' height='6' fill='#fff' stroke='\(color)' stroke-width='1.5'/>"
        }
    }

    /// The top of the stack at every x.
    func stackedTops(_ shown: [Series]) -> [(x: Double, y: Double)] {
        var top = [Double: Double]()
        for s in shown { for p in s.points { top[p.x, default: 0] += p.y } }
        return top.map { (x: $0.key, y: $0.value) }
    }

    /// At most `maxPoints` points: longer series are averaged over consecutive buckets
    /// (the plot is a few hundred pixels wide, so no detail is lost to the eye).
    static func thin(_ points: [(x: Double, y: Double)]) -> [(x: Double, y: Double)] {
        guard points.count > maxPoints else { return points }
        let per = Int((Double(points.count) / Double(maxPoints)).rounded(.up))
        return stride(from: 0, to: points.count, by: per).map { i in
            let b = points[i..<min(points.count, i + per)]
            return (x: b.reduce(0) { $0 + $1.x } / Double(b.count), y: b.reduce(0) { $0 + $1.y } / Double(b.count))
        }
    }

    func f(_ v: Double) -> String { String(format: "%.1f", v) }

    static func esc(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "'", with: "&#39;")
    }
}

extension Double {
    /// The value with the round-off of `k * step` removed (0.30000000000000004 -> 0.3).
    func roundedToStep(_ step: Double) -> Double {
        let decimals = max(0, -floor(log10(step))) + 2
        let scale = pow(10, min(decimals, 15))
        return (self * scale).rounded() / scale
    }
}
