import Foundation
import XCTest
@testable import KATDist
import KATSupport
import KATTestSupport

/// Metrics lines of a run: `warm` warm-start steps then `rl` RL steps (or `offline`
/// offline steps), with evaluations every `evalEvery` RL steps (0: none).
func runLines(warm: Int, rl: Int, offline: Int = 0, evalEvery: Int, idle: Bool = false) -> [JSON] {
    var out: [JSON] = []
    var rng = SplitMix64(seed: 5)
    for s in 1...(warm + rl + offline) {
        var m = StepMetrics()
        m.step = s
        m.time = 0.2 * Double(s)
        m.phase = s <= warm ? .warmstart : (offline > 0 ? .offline : .rl)
        m.policyVersion = s
        m.stats.logprobMean = -5 + 4 * (1 - exp(-Double(s) / 30)) + 0.05 * rng.nextDouble()
        m.stats.loss = m.phase == .warmstart ? -1 : 0.02 * (rng.nextDouble() - 0.5)
        m.stats.gradNorm = 3 * exp(-Double(s) / 40) + 0.2 * rng.nextDouble()
        m.stats.lr = m.phase == .warmstart ? 1e-3 : 5e-4 * (1 + cos(Double.pi * Double(s - warm) / Double(max(1, rl + offline)))) / 2
        m.stats.tokensFlat = 1000; m.stats.tokensTrie = 400; m.stats.tokensComputed = 400
        m.tokensPerS = 15_000 + 3000 * rng.nextDouble()
        m.tForwardBackward = 0.1 + 0.02 * rng.nextDouble(); m.tWaitData = m.phase == .rl ? 0.05 : 0; m.tOptimizer = 0.004
        if m.phase == .rl {
            m.rewardMean = min(1, 0.3 + Double(s - warm) / Double(2 * rl) + 0.1 * rng.nextDouble())
            m.entropyMean = 0.6 - 0.1 * Double(s - warm) / Double(rl)
            m.stats.clipFrac = 0.05 * rng.nextDouble()
            m.stats.klBehaviour = 1e-3 * rng.nextDouble()
            m.stalenessMean = rng.nextDouble(); m.stalenessMax = 2
        }
        if evalEvery > 0, m.phase == .rl, (s - warm) % evalEvery == 0 || s == warm + 1 {
            m.evalSuccess = min(1, 0.4 + Double(s - warm) / Double(2 * rl)); m.evalReward = min(1, (m.evalSuccess ?? 0) + 0.05)
        }
        var json = m.json
        if idle, case var .object(members) = json { members.append(("trainer_idle", JSON(0.1 + 0.05 * rng.nextDouble()))); json = .object(members) }
        out.append(json)
    }
    return out
}

final class ChartTests: XCTestCase {
    /// Ticks are whole multiples of 1, 2 or 5 times a power of ten, cover the data, and
    /// number between 3 and 9, over ranges from 1e-9 to 1e9 wide.
    func testTicksAreNiceNumbersThatCoverTheData() {
        var rng = SplitMix64(seed: 3)
        for _ in 0..<2000 {
            let scale = pow(10, Double(Int(rng.next() % 19)) - 9)
            let a = (rng.nextDouble() - 0.5) * 10 * scale, b = a + rng.nextDouble() * 10 * scale + 1e-12
            let (step, ticks) = Chart.niceTicks(a, b)
            let mantissa = step / pow(10, floor(log10(step)))
            XCTAssertTrue([1.0, 2, 5].contains { abs(mantissa - $0) < 1e-9 }, "step \(step) for \(a)...\(b)")
            XCTAssertLessThanOrEqual(ticks.first!, a + 1e-9 * step)
            XCTAssertGreaterThanOrEqual(ticks.last!, b - 1e-9 * step)
            XCTAssertTrue((3...9).contains(ticks.count), "\(ticks.count) ticks for \(a)...\(b)")
            for t in ticks { XCTAssertEqual(t / step, (t / step).rounded(), accuracy: 1e-6) }
            let labels = ticks.map { Chart.tickLabel($0, step: step) }
            XCTAssertEqual(Set(labels).count, labels.count, "labels \(labels) tell the ticks apart")
        }
        XCTAssertEqual(Chart.niceTicks(0.292, -0.709 + 1.7).ticks, [0.2, 0.4, 0.6, 0.8, 1.0])
        XCTAssertEqual(Chart.tickLabel(0.0005, step: 0.0002), "5e-4")
        XCTAssertEqual(Chart.tickLabel(150_000, step: 50_000), "150k")
    }

    /// A report is one page with nothing fetched from elsewhere: no scripts, no links to
    /// other files, every panel present.
    func testReportIsSelfContained() {
        let html = Report.html(title: "t", lines: runLines(warm: 20, rl: 30, evalEvery: 10), notes: ["note <1>"])
        for banned in ["<script", "http://", "https://", "src=", "href=", "@import", "url("] {
            XCTAssertFalse(html.replacingOccurrences(of: "xmlns='http://www.w3.org/2000/svg'", with: "").contains(banned), banned)
        }
        XCTAssertTrue(html.contains("note &lt;1&gt;"))
        for p in Report.panels(lines: []) { XCTAssertTrue(html.contains("id='panel-\(p.id)'"), p.id) }
    }
}

/// The report rendered by a real browser (Debian's chromium, headless).
final class ReportLayoutTests: TemporaryDirectoryTestCase {
    func chromium() throws -> String {
        for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"] where FileManager.default.isExecutableFile(atPath: c) {
            return c
        }
        if ProcessInfo.processInfo.environment["KAT_REQUIRE_CHROMIUM"] == "1" { XCTFail("chromium is not installed"); return "" }
        throw XCTSkip("chromium is not installed (apt-get install chromium); CI installs it")
    }

    func runBrowser(_ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try chromium())
        p.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--user-data-dir=\(dir)/profile"] + args
        let out = dir + "/browser-\(UUID().uuidString).out"
        FileManager.default.createFile(atPath: out, contents: nil)
        p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
        p.standardError = FileHandle.nullDevice
        try p.run()
        let deadline = Date().addingTimeInterval(120)
        while p.isRunning, Date() < deadline { usleep(20_000) }
        if p.isRunning { p.terminate(); XCTFail("chromium did not finish in 120 s") }
        p.waitUntilExit()
        return try String(contentsOfFile: out, encoding: .utf8)
    }

    /// What the browser lays out: every panel's box, and every fault found in it (a text
    /// outside its chart, tick labels on top of each other, a legend over the plot).
    static let measure = """
    <script>
    const out = {panels: [], faults: [], pageWidth: document.documentElement.scrollWidth};
    const inside = (a, b) => a.left >= b.left - 0.5 && a.right <= b.right + 0.5 && a.top >= b.top - 0.5 && a.bottom <= b.bottom + 0.5;
    const overlap = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
    for (const p of document.querySelectorAll('.panel')) {
      const r = p.getBoundingClientRect();
      const svg = p.querySelector('svg'), box = svg.getBoundingClientRect();
      out.panels.push({id: p.id, x: r.left, y: r.top, w: r.width, h: r.height, cw: box.width, ch: box.height});
      for (const t of svg.querySelectorAll('text')) {
        if (!inside(t.getBoundingClientRect(), box)) out.faults.push(p.id + ': "' + t.textContent + '" leaves its chart');
      }
      const ticks = [...svg.querySelectorAll('.tick-x, .tick-y')].map(t => t.getBoundingClientRect());
      for (let i = 0; i < ticks.length; i++) for (let j = i + 1; j < ticks.length; j++)
        if (overlap(ticks[i], ticks[j])) out.faults.push(p.id + ': tick labels overlap');
      const area = svg.querySelector('.plot');
      if (!area) { out.faults.push(p.id + ': no plot area'); continue; }
      const plot = area.getBoundingClientRect();
      for (const t of svg.querySelectorAll('.legend text, .title')) {
        if (overlap(t.getBoundingClientRect(), plot)) out.faults.push(p.id + ': "' + t.textContent + '" lies over the plot');
      }
    }
    const pre = document.createElement('pre');
    pre.id = 'layout';
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
    </script>
    """

    struct Layout {
        var panels: [(id: String, x: Double, y: Double, w: Double, h: Double, chartWidth: Double, chartHeight: Double)]
        var faults: [String]
        var pageWidth: Double
    }

    func layout(_ lines: [JSON], name: String) throws -> Layout {
        let html = Report.html(title: "kat-dist run \(name)", lines: lines, notes: ["held-out success at the start: 0.000"])
        let path = dir + "/\(name).html"
        try html.replacingOccurrences(of: "</body>", with: ReportLayoutTests.measure + "</body>").write(toFile: path, atomically: true, encoding: .utf8)
        let dom = try runBrowser(["--window-size=1200,2400", "--dump-dom", "file://" + path])
        guard let a = dom.range(of: "<pre id=\"layout\">"), let b = dom.range(of: "</pre>", range: a.upperBound..<dom.endIndex) else {
            XCTFail("\(name): the browser gave no layout: \(dom.prefix(300))")
            return Layout(panels: [], faults: [], pageWidth: 0)
        }
        let json = try JSON.parse(String(dom[a.upperBound..<b.lowerBound]).replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&amp;", with: "&"))
        let panels = (json["panels"]?.arrayValue ?? []).map { p in
            (id: p["id"]?.stringValue ?? "", x: p["x"]?.doubleValue ?? 0, y: p["y"]?.doubleValue ?? 0, w: p["w"]?.doubleValue ?? 0,
             h: p["h"]?.doubleValue ?? 0, chartWidth: p["cw"]?.doubleValue ?? 0, chartHeight: p["ch"]?.doubleValue ?? 0)
        }
        return Layout(panels: panels, faults: (json["faults"]?.arrayValue ?? []).compactMap(\.stringValue), pageWidth: json["pageWidth"]?.doubleValue ?? 0)
    }

    /// Reports of an online run with evaluation, an offline run, a run with evaluation off
    /// and a trainer_idle column, and a run with no step yet lay out the same grid: the
    /// same panels in the same places relative to the first, all of the same size and each
    /// filled by its chart, none
    /// overlapping, the page no wider than a 1200-pixel window; no text leaves its chart,
    /// no tick labels collide, no legend or title lies over a plot.
    func testReportLayoutIsTheSameWhateverTheRunRecorded() throws {
        let reports: [(String, [JSON])] = [
            ("online", runLines(warm: 60, rl: 90, evalEvery: 15)),
            ("offline", runLines(warm: 0, rl: 0, offline: 120, evalEvery: 0)),
            ("no-eval", runLines(warm: 0, rl: 200, evalEvery: 0, idle: true)),
            ("empty", []),
        ]
        var reference: [(id: String, dx: Double, dy: Double)]?
        for (name, lines) in reports {
            let l = try layout(lines, name: name)
            XCTAssertEqual(l.faults, [], name)
            XCTAssertEqual(l.panels.count, 14, name)
            XCTAssertLessThanOrEqual(l.pageWidth, 1200, "\(name): the page fits the window's width")
            guard let first = l.panels.first else { continue }
            for p in l.panels {
                // The panel's box: its fixed size plus a 1-pixel border on each side.
                XCTAssertEqual(p.w, Report.panelWidth + 2, "\(name) \(p.id)")
                XCTAssertEqual(p.h, Report.panelHeight + 2, "\(name) \(p.id)")
                XCTAssertEqual(p.chartWidth, Report.panelWidth, "\(name) \(p.id): the chart fills its panel")
                XCTAssertEqual(p.chartHeight, Report.panelHeight, "\(name) \(p.id): the chart fills its panel")
            }
            for (i, p) in l.panels.enumerated() {
                for q in l.panels[(i + 1)...] {
                    XCTAssertFalse(p.x < q.x + q.w && q.x < p.x + p.w && p.y < q.y + q.h && q.y < p.y + p.h, "\(name): \(p.id) overlaps \(q.id)")
                }
            }
            let grid = l.panels.map { (id: $0.id, dx: $0.x - first.x, dy: $0.y - first.y) }
            if let reference {
                XCTAssertEqual(grid.map(\.id), reference.map(\.id), name)
                for (g, r) in zip(grid, reference) { XCTAssertTrue(g.dx == r.dx && g.dy == r.dy, "\(name): \(g.id) moved") }
            } else {
                reference = grid
            }
        }
    }

    /// The browser's screenshot of a report is an image of the window's size.
    func testHeadlessBrowserScreenshotsTheReport() throws {
        let path = dir + "/report.html", png = dir + "/report.png"
        try Report.html(title: "kat-dist run", lines: runLines(warm: 30, rl: 40, evalEvery: 10), notes: [])
            .write(toFile: path, atomically: true, encoding: .utf8)
        _ = try runBrowser(["--window-size=1200,2400", "--screenshot=\(png)", "file://" + path])
        let data = try Data(contentsOf: URL(fileURLWithPath: png))
        XCTAssertEqual(Array(data.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A], "a PNG")
        // IHDR: width and height, big-endian, at bytes 16-23.
        let be = { (i: Int) in data[i..<(i + 4)].reduce(0) { $0 << 8 | Int($1) } }
        XCTAssertEqual(be(16), 1200)
        XCTAssertEqual(be(20), 2400)
    }
}
