import Foundation
import KATSupport

/// One trajectory of a JSON Lines file (Docs/formats.md), validated.
public struct Trajectory: Sendable, Equatable {
    public var id: String
    /// Group name; nil makes the trajectory a group of its own.
    public var group: String?
    public var tokens: [Int32]
    /// 1 where the token is trained on; mask[0] is always 0.
    public var lossMask: [UInt8]
    /// Behaviour log-probs where the mask is 1 (NaN elsewhere); nil means on-policy.
    public var logprobs: [Float]?
    public var reward: Double?
    public var advantage: Double?
    /// Mean behaviour entropy over the mask-1 tokens.
    public var entropy: Double?
    /// The policy version that sampled the trajectory: with `versions`, the oldest of them.
    public var policyVersion: Int?
    /// Per position, the policy version that sampled the token where the mask is 1 (-1
    /// elsewhere); nil when not recorded. Partial rollouts change weights mid-episode, so
    /// one trajectory may hold several versions.
    public var versions: [Int]?
    /// Per position, the entropy (nats) of the behaviour policy's full next-token
    /// distribution at the token, where the mask is 1 (NaN elsewhere); nil when not recorded.
    public var entropies: [Float]?
    /// Where it was read from, for messages ("file:line").
    public var source: String

    public init(id: String, group: String? = nil, tokens: [Int32], lossMask: [UInt8], logprobs: [Float]? = nil,
                reward: Double? = nil, advantage: Double? = nil, entropy: Double? = nil, policyVersion: Int? = nil,
                versions: [Int]? = nil, entropies: [Float]? = nil, source: String = "") {
        self.id = id; self.group = group; self.tokens = tokens; self.lossMask = lossMask; self.logprobs = logprobs
        self.reward = reward; self.advantage = advantage; self.entropy = entropy; self.policyVersion = policyVersion
        self.versions = versions; self.entropies = entropies
        self.source = source
    }

    /// Number of mask-1 tokens.
    public var lossTokens: Int { lossMask.reduce(0) { $0 + Int($1) } }

    /// Whether the loss tokens were sampled by more than one policy version (a partial
    /// rollout that took new weights mid-episode).
    public var hasMixedVersions: Bool {
        guard let versions else { return false }
        var first: Int?
        for (k, v) in versions.enumerated() where lossMask[k] == 1 {
            if let f = first, f != v { return true }
            first = first ?? v
        }
        return false
    }
}

/// A fault in a trajectory file: names the file, line and field.
public struct TrajectoryError: Error, CustomStringConvertible, Equatable {
    public var path: String
    public var line: Int
    public var field: String
    public var reason: String
    public var description: String {
        "\(path):\(line): " + (field.isEmpty ? "" : "field \(field): ") + reason
    }
}

/// Reads trajectories from JSON Lines with every rule of Docs/formats.md. The whole file
/// is validated before anything is returned, so nothing trains on a half-read file.
public enum TrajectoryReader {
    public static func read(path: String, vocabSize: Int, maxPositions: Int) throws(TrajectoryError) -> [Trajectory] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TrajectoryError(path: path, line: 0, field: "", reason: FileManager.default.fileExists(atPath: path) ? "cannot read the file" : "no such file")
        }
        var out: [Trajectory] = []
        var lineNo = 0
        var ids = Set<String>()
        for raw in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNo += 1
            if raw.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            let t = try parse(line: Array(raw), path: path, lineNo: lineNo, vocabSize: vocabSize, maxPositions: maxPositions)
            if !ids.insert(t.id).inserted {
                throw TrajectoryError(path: path, line: lineNo, field: "id", reason: "\"\(t.id)\" appears on an earlier line")
            }
            out.append(t)
        }
        if out.isEmpty { throw TrajectoryError(path: path, line: 0, field: "", reason: "no trajectories in the file") }
        return out
    }

    /// Parses and validates one line.
    public static func parse(line: [UInt8], path: String, lineNo: Int, vocabSize: Int, maxPositions: Int) throws(TrajectoryError) -> Trajectory {
        func bad(_ field: String, _ why: String) -> TrajectoryError { TrajectoryError(path: path, line: lineNo, field: field, reason: why) }
        let obj: JSON
        do { obj = try JSON.parse(line) } catch { throw bad("", "not valid JSON (\(error))") }
        guard obj.objectMembers != nil else { throw bad("", "a line must be a JSON object, got \(obj.typeName)") }

        func number(_ key: String) throws(TrajectoryError) -> Double? {
            guard let v = obj[key], !v.isNull else { return nil }
            guard let d = v.doubleValue else { throw bad(key, "must be a number, got \(v.typeName)") }
            guard d.isFinite else { throw bad(key, "must be finite") }
            return d
        }
        let id: String
        switch obj["id"] {
        case let .string(s)?: id = s
        case let .int(i)?: id = String(i)
        case nil: throw bad("id", "missing")
        case let v?: throw bad("id", "must be a string or an integer, got \(v.typeName)")
        }
        var group: String?
        switch obj["group"] {
        case nil, .null?: group = nil
        case let .string(s)?: group = s
        case let .int(i)?: group = String(i)
        case let v?: throw bad("group", "must be a string or an integer, got \(v.typeName)")
        }
        guard let tv = obj["tokens"] else { throw bad("tokens", "missing") }
        guard let arr = tv.arrayValue else { throw bad("tokens", "must be an array of token ids, got \(tv.typeName)") }
        if arr.isEmpty { throw bad("tokens", "is empty") }
        if arr.count > maxPositions { throw bad("tokens", "has \(arr.count) tokens, more than n_positions (\(maxPositions))") }
        var tokens = [Int32]()
        tokens.reserveCapacity(arr.count)
        for (k, t) in arr.enumerated() {
            guard case let .int(v) = t else { throw bad("tokens", "entry \(k) must be an integer, got \(t.typeName)") }
            guard v >= 0, v < vocabSize else { throw bad("tokens", "entry \(k) = \(v) is outside the vocabulary (0..<\(vocabSize))") }
            tokens.append(Int32(v))
        }
        let n = tokens.count
        var mask = [UInt8](repeating: 0, count: n)
        let hasMask = obj["loss_mask"] != nil && obj["loss_mask"] != .null
        let hasPrompt = obj["prompt_len"] != nil && obj["prompt_len"] != .null
        if hasMask && hasPrompt { throw bad("loss_mask", "give either loss_mask or prompt_len, not both") }
        if hasMask {
            guard let m = obj["loss_mask"]?.arrayValue else { throw bad("loss_mask", "must be an array of 0 and 1") }
            if m.count != n { throw bad("loss_mask", "has \(m.count) entries but tokens has \(n)") }
            for (k, v) in m.enumerated() {
                switch v {
                case .int(0), .bool(false): mask[k] = 0
                case .int(1), .bool(true): mask[k] = 1
                default: throw bad("loss_mask", "entry \(k) must be 0 or 1, got \(v.serialized)")
                }
            }
        } else if hasPrompt {
            guard let p = obj["prompt_len"]?.intValue else { throw bad("prompt_len", "must be an integer") }
            guard p >= 1, p <= n else { throw bad("prompt_len", "must be between 1 and the token count (\(n)), got \(p)") }
            for k in p..<n { mask[k] = 1 }
        } else {
            throw bad("loss_mask", "missing (give loss_mask or prompt_len)")
        }
        if mask[0] != 0 { throw bad("loss_mask", "entry 0 must be 0 (the first token has no prediction)") }

        var logprobs: [Float]?
        if let lv = obj["logprobs"], !lv.isNull {
            guard let la = lv.arrayValue else { throw bad("logprobs", "must be an array, got \(lv.typeName)") }
            if la.count != n { throw bad("logprobs", "has \(la.count) entries but tokens has \(n)") }
            var lp = [Float](repeating: .nan, count: n)
            for (k, v) in la.enumerated() {
                if v.isNull {
                    if mask[k] == 1 { throw bad("logprobs", "entry \(k) is null but the token is trained on (mask 1)") }
                    continue
                }
                guard let d = v.doubleValue else { throw bad("logprobs", "entry \(k) must be a number or null, got \(v.typeName)") }
                guard d.isFinite else { throw bad("logprobs", "entry \(k) must be finite") }
                guard d <= 0 else { throw bad("logprobs", "entry \(k) = \(d) is above 0 (a log-probability)") }
                if mask[k] == 1 { lp[k] = Float(d) }
            }
            logprobs = lp
        }
        let reward = try number("reward")
        let advantage = try number("advantage")
        var entropy = try number("entropy")
        if let e = entropy, e < 0 { throw bad("entropy", "must be non-negative, got \(e)") }
        var version: Int?
        if let v = obj["policy_version"], !v.isNull {
            guard let i = v.intValue, i >= 0 else { throw bad("policy_version", "must be a non-negative integer") }
            version = i
        }

        /// A per-token array: `n` entries, null or a value where the mask is 0, a value where it is 1.
        func perToken<T>(_ key: String, what: String, _ convert: (JSON, Int) throws(TrajectoryError) -> T?) throws(TrajectoryError) -> [T?]? {
            guard let av = obj[key], !av.isNull else { return nil }
            guard let a = av.arrayValue else { throw bad(key, "must be an array, got \(av.typeName)") }
            if a.count != n { throw bad(key, "has \(a.count) entries but tokens has \(n)") }
            var out: [T?] = []
            out.reserveCapacity(n)
            for (k, v) in a.enumerated() {
                if v.isNull {
                    if mask[k] == 1 { throw bad(key, "entry \(k) is null but the token is trained on (mask 1)") }
                    out.append(nil)
                    continue
                }
                guard let x = try convert(v, k) else { throw bad(key, "entry \(k) must be \(what) or null, got \(v.serialized)") }
                out.append(mask[k] == 1 ? x : nil)
            }
            return out
        }
        let versions = try perToken("versions", what: "a non-negative integer") { v, _ throws(TrajectoryError) in
            v.intValue.flatMap { $0 >= 0 ? $0 : nil }
        }.map { $0.map { $0 ?? -1 } }
        let entropies = try perToken("entropies", what: "a number") { v, k throws(TrajectoryError) -> Float? in
            guard let d = v.doubleValue else { return nil }
            guard d.isFinite else { throw bad("entropies", "entry \(k) must be finite") }
            guard d >= 0 else { throw bad("entropies", "entry \(k) = \(d) must be non-negative (an entropy)") }
            return Float(d)
        }.map { $0.map { $0 ?? .nan } }
        if let versions {
            let trained = versions.indices.filter { mask[$0] == 1 }.map { versions[$0] }
            if let oldest = trained.min() {
                if let v = version, v != oldest {
                    throw bad("policy_version", "is \(v) but the oldest version in versions is \(oldest); policy_version must be the smallest of them")
                }
                version = oldest
            }
        }
        if entropy == nil, let entropies {
            // The mean over the loss tokens stands in for a missing `entropy`.
            let h = entropies.indices.filter { mask[$0] == 1 }.map { Double(entropies[$0]) }
            if !h.isEmpty { entropy = h.reduce(0, +) / Double(h.count) }
        }
        return Trajectory(id: id, group: group, tokens: tokens, lossMask: mask, logprobs: logprobs, reward: reward,
                          advantage: advantage, entropy: entropy, policyVersion: version, versions: versions, entropies: entropies,
                          source: "\(path):\(lineNo)")
    }
}
