import Foundation
import KATModel
import KATSupport

/// A self-contained HTML report of a run: learning curves and the time breakdown as
/// inline SVG, no scripts and no network. Rewritten as the run goes.
public enum Report {
    static func esc(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }

    /// One line chart of (x, y) series.
    public static func chart(title: String, series: [(name: String, color: String, points: [(Double, Double)])], yRange: ClosedRange<Double>? = nil) -> String {
        let w = 560.0, h = 220.0, left = 50.0, bottom = 30.0, top = 24.0, right = 12.0
        let all = series.flatMap(\.points)
        guard !all.isEmpty else { return "<h3>\(esc(title))</h3><p>no data yet</p>" }
        let xs = all.map(\.0), ys = all.map(\.1)
        let x0 = xs.min()!, x1 = max(xs.max()!, x0 + 1)
        var y0 = yRange?.lowerBound ?? ys.min() ?? 0, y1 = yRange?.upperBound ?? ys.max() ?? 1
        if y1 - y0 < 1e-12 { y0 -= 0.5; y1 += 0.5 }
        func px(_ x: Double) -> Double { left + (x - x0) / (x1 - x0) * (w - left - right) }
        func py(_ y: Double) -> Double { top + (1 - (y - y0) / (y1 - y0)) * (h - top - bottom) }
        var svg = "<svg xmlns='http://www.w3.org/2000/svg' width='\(Int(w))' height='\(Int(h))' style='background:#fff;border:1px solid #ddd'>"
        svg += "<text x='\(left)' y='16' font-size='13' font-family='sans-serif'>\(esc(title))</text>"
        for k in 0...4 {
            let y = y0 + (y1 - y0) * Double(k) / 4
            svg += "<line x1='\(left)' x2='\(w - right)' y1='\(py(y))' y2='\(py(y))' stroke='#eee'/>"
            svg += "<text x='4' y='\(py(y) + 4)' font-size='10' font-family='sans-serif'>\(String(format: "%.3g", y))</text>"
        }
        svg += "<text x='\(left)' y='\(h - 8)' font-size='10' font-family='sans-serif'>step \(Int(x0))</text>"
        svg += "<text x='\(w - right - 60)' y='\(h - 8)' font-size='10' font-family='sans-serif'>step \(Int(x1))</text>"
        for (k, s) in series.enumerated() where !s.points.isEmpty {
            let pts = s.points.map { String(format: "%.1f,%.1f", px($0.0), py($0.1)) }.joined(separator: " ")
            svg += "<polyline fill='none' stroke='\(s.color)' stroke-width='1.6' points='\(pts)'/>"
            if s.points.count == 1 { svg += "<circle cx='\(px(s.points[0].0))' cy='\(py(s.points[0].1))' r='3' fill='\(s.color)'/>" }
            svg += "<text x='\(w - right - 150)' y='\(16 + 12 * Double(k))' font-size='11' fill='\(s.color)' font-family='sans-serif'>\(esc(s.name))</text>"
        }
        return svg + "</svg>"
    }

    /// Renders the report from metrics lines.
    public static func html(title: String, lines: [JSON], notes: [String]) -> String {
        func series(_ key: String) -> [(Double, Double)] {
            lines.compactMap { l in
                guard let s = l["step"]?.doubleValue, let v = l[key]?.doubleValue else { return nil }
                return (s, v)
            }
        }
        var body = "<!doctype html><html><head><meta charset='utf-8'><title>\(esc(title))</title></head>"
        body += "<body style='font-family:sans-serif;max-width:1180px'><h2>\(esc(title))</h2>"
        for n in notes { body += "<p>\(esc(n))</p>" }
        body += "<div style='display:flex;flex-wrap:wrap;gap:8px'>"
        body += chart(title: "held-out success (greedy) and reward", series: [("eval_success", "#c0392b", series("eval_success")),
                                                                            ("eval_reward", "#e67e22", series("eval_reward"))], yRange: 0...1)
        body += chart(title: "training reward (mean per step)", series: [("reward_mean", "#2471a3", series("reward_mean"))])
        body += chart(title: "loss", series: [("loss", "#7d3c98", series("loss"))])
        body += chart(title: "entropy and clip fraction", series: [("entropy_mean", "#117a65", series("entropy_mean")),
                                                                 ("clip_frac", "#b7950b", series("clip_frac"))])
        body += chart(title: "time per step (s)", series: [("t_wait_data", "#5d6d7e", series("t_wait_data")),
                                                         ("t_forward_backward", "#1e8449", series("t_forward_backward")),
                                                         ("t_optimizer", "#a04000", series("t_optimizer")),
                                                         ("t_allreduce", "#2e86c1", series("t_allreduce"))])
        body += chart(title: "flat tokens / trie tokens", series: [("trie_ratio", "#34495e", series("trie_ratio"))])
        body += "</div></body></html>\n"
        return body
    }
}
