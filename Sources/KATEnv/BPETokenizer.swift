import Foundation

/// A token added on top of a BPE vocabulary (Hugging Face `AddedToken`): matched in the
/// text before pre-tokenization, longest first at the leftmost position.
public struct AddedToken: Sendable, Equatable {
    public var content: String
    public var id: Int32
    /// Skipped by `decode(_:skipSpecialTokens: true)`.
    public var special: Bool
    /// Matches only when not inside a word.
    public var singleWord = false
    /// Takes the whitespace on its left (right) into the match.
    public var lstrip = false
    public var rstrip = false
    /// Matched in the normalized text (after the normalizer) rather than the raw text.
    public var normalized = false

    public init(content: String, id: Int32, special: Bool, singleWord: Bool = false, lstrip: Bool = false,
                rstrip: Bool = false, normalized: Bool = false) {
        self.content = content; self.id = id; self.special = special; self.singleWord = singleWord
        self.lstrip = lstrip; self.rstrip = rstrip; self.normalized = normalized
    }
}

/// A byte-level BPE tokenizer, encoding and decoding as Hugging Face `tokenizers` does:
///
///     text -> added tokens cut out of the raw text (tokens not `normalized`)
///          -> normalizer on the rest -> added tokens cut out of it (`normalized` ones)
///          -> pre-tokenizer steps (Split patterns, then ByteLevel) -> pieces of bytes
///          -> BPE on each piece: its bytes as symbols, then the lowest-ranked merge of two
///             adjacent symbols, again and again (leftmost first among equal ranks)
///
/// Decoding writes each id's text (added tokens their content), maps byte-level
/// characters back to bytes and reads the bytes as UTF-8 with replacement.
/// Source: `tokenizers/src/models/bpe/word.rs` (`merge_all`), `added_vocabulary.rs`,
/// `pre_tokenizers/byte_level.rs`.
public struct BPETokenizer: Tokenizer {
    public let origin: String
    public var specials: SpecialTokens
    public let vocabularySize: Int

    /// The model's vocabulary, by the UTF-8 of each token's text.
    let vocab: [[UInt8]: Int32]
    /// The id of each byte's alphabet character, or -1 when the vocabulary lacks it.
    let byteIDs: [Int32]
    /// (left id << 32 | right id) -> (rank, merged id).
    let merges: [UInt64: Merge]
    let unknown: Int32?
    let fuseUnknown: Bool
    let ignoreMerges: Bool
    let normalizations: [TextNormalization]
    let steps: [PreTokenizerStep]
    let rawAdded: AddedTokenMatcher
    let normalizedAdded: AddedTokenMatcher
    /// Bytes each id decodes to, and whether it is special.
    let decoded: [[UInt8]?]
    let specialIDs: Set<Int32>

    struct Merge: Sendable { var rank: Int32; var id: Int32 }

    /// Builds a tokenizer from its parts (the loader reads them from files).
    /// - Parameters:
    ///   - vocab: token text -> id.
    ///   - merges: pairs of token texts, highest priority first.
    ///   - addedTokens: with the ids they were given.
    ///   - splitSpecialTokens: special tokens are not matched in text (transformers'
    ///     `split_special_tokens`).
    /// - Throws: `TokenizerError.badFile` naming `origin` when a merge names a token the
    ///   vocabulary lacks, or the unknown token is not in it.
    public init(origin: String, vocab: [(String, Int32)], merges: [(String, String)], addedTokens: [AddedToken],
                normalizations: [TextNormalization], steps: [PreTokenizerStep], unknownToken: String?, fuseUnknown: Bool,
                ignoreMerges: Bool, splitSpecialTokens: Bool, specials: SpecialTokens) throws(TokenizerError) {
        self.origin = origin
        self.specials = specials
        var v: [[UInt8]: Int32] = [:]
        var maxID: Int32 = -1
        for (text, id) in vocab {
            v[Array(text.utf8)] = id
            maxID = max(maxID, id)
        }
        self.vocab = v
        byteIDs = (0..<256).map { v[Array(String(Character(ByteLevel.scalar(of: UInt8($0)))).utf8)] ?? -1 }
        var m: [UInt64: Merge] = [:]
        for (rank, (a, b)) in merges.enumerated() {
            guard let ia = v[Array(a.utf8)], let ib = v[Array(b.utf8)] else {
                throw .badFile(path: origin, reason: "merge \(rank + 1) (\"\(a) \(b)\") names a token that is not in the vocabulary")
            }
            guard let merged = v[Array((a + b).utf8)] else {
                throw .badFile(path: origin, reason: "merge \(rank + 1) (\"\(a) \(b)\") makes \"\(a + b)\", which is not in the vocabulary")
            }
            m[UInt64(UInt32(bitPattern: ia)) << 32 | UInt64(UInt32(bitPattern: ib))] = Merge(rank: Int32(rank), id: merged)
        }
        self.merges = m
        if let unknownToken {
            guard let u = v[Array(unknownToken.utf8)] else {
                throw .badFile(path: origin, reason: "the unknown token \"\(unknownToken)\" is not in the vocabulary")
            }
            unknown = u
        } else {
            unknown = nil
        }
        self.fuseUnknown = fuseUnknown
        self.ignoreMerges = ignoreMerges
        self.normalizations = normalizations
        self.steps = steps

        var added = addedTokens
        for k in added.indices where added[k].normalized {
            added[k].content = normalizations.reduce(added[k].content) { $1.apply($0) }
        }
        rawAdded = AddedTokenMatcher(added.filter { !$0.normalized }, skipSpecial: splitSpecialTokens)
        normalizedAdded = AddedTokenMatcher(added.filter(\.normalized), skipSpecial: splitSpecialTokens)
        for t in added { maxID = max(maxID, t.id) }
        vocabularySize = Int(maxID) + 1

        var dec = [[UInt8]?](repeating: nil, count: Int(maxID) + 1)
        for (text, id) in vocab where id >= 0 { dec[Int(id)] = ByteLevel.decodedBytes(of: text) }
        for t in added where t.id >= 0 { dec[Int(t.id)] = ByteLevel.decodedBytes(of: t.content) }
        decoded = dec
        specialIDs = Set(added.filter(\.special).map(\.id))
    }

    // MARK: - Encoding

    public func encode(_ text: String) -> [Int32] {
        var out: [Int32] = []
        for part in rawAdded.split(Array(text.utf8)) {
            switch part {
            case let .token(id): out.append(id)
            case let .text(bytes):
                let normalized = normalizations.reduce(String(decoding: bytes, as: UTF8.self)) { $1.apply($0) }
                for inner in normalizedAdded.split(Array(normalized.utf8)) {
                    switch inner {
                    case let .token(id): out.append(id)
                    case let .text(b): encodePretokenized(String(decoding: b, as: UTF8.self), into: &out)
                    }
                }
            }
        }
        return out
    }

    /// Pre-tokenizes text that holds no added token and runs BPE on each piece.
    func encodePretokenized(_ text: String, into out: inout [Int32]) {
        var pieces = text.isEmpty ? [] : [text]
        for step in steps { pieces = step.apply(pieces) }
        for p in pieces { tokenize(Array(p.utf8), into: &out) }
    }

    /// BPE on one piece's bytes. Source: `BPE::merge_word` and `Word::merge_all`.
    func tokenize(_ bytes: [UInt8], into out: inout [Int32]) {
        if bytes.isEmpty { return }
        if ignoreMerges {
            var key: [UInt8] = []
            for b in bytes { key += Array(String(Character(ByteLevel.scalar(of: b))).utf8) }
            if let id = vocab[key] { out.append(id); return }
        }
        // The symbols: each byte's id; bytes outside the vocabulary become the unknown
        // token (runs of them fused into one when fuse_unk) or vanish without one.
        var ids: [Int32] = []
        ids.reserveCapacity(bytes.count)
        var pendingUnknown = false
        for b in bytes {
            let id = byteIDs[Int(b)]
            if id >= 0 {
                if pendingUnknown, let u = unknown { ids.append(u); pendingUnknown = false }
                ids.append(id)
            } else if let u = unknown {
                if pendingUnknown && !fuseUnknown { ids.append(u) }
                pendingUnknown = true
            }
        }
        if pendingUnknown, let u = unknown { ids.append(u) }
        if ids.count < 2 { out += ids; return }

        // Symbols form a linked list; a min-heap of candidate merges ordered by (rank,
        // position) picks the next one. Stale entries (a side already merged away, or the
        // pair changed) are skipped when popped.
        var symbol = ids
        var prev = (0..<ids.count).map { $0 - 1 }
        var next = (0..<ids.count).map { $0 + 1 < ids.count ? $0 + 1 : -1 }
        var alive = [Bool](repeating: true, count: ids.count)
        var heap = MergeHeap()
        func candidate(_ pos: Int) {
            let n = next[pos]
            guard n >= 0, let m = merges[UInt64(UInt32(bitPattern: symbol[pos])) << 32 | UInt64(UInt32(bitPattern: symbol[n]))] else { return }
            heap.push(MergeHeap.Entry(rank: m.rank, pos: Int32(pos), id: m.id))
        }
        for pos in 0..<(ids.count - 1) { candidate(pos) }
        while let top = heap.pop() {
            let pos = Int(top.pos)
            guard alive[pos], next[pos] >= 0 else { continue }
            let right = next[pos]
            guard let m = merges[UInt64(UInt32(bitPattern: symbol[pos])) << 32 | UInt64(UInt32(bitPattern: symbol[right]))],
                  m.id == top.id else { continue }
            symbol[pos] = top.id
            alive[right] = false
            next[pos] = next[right]
            if next[right] >= 0 { prev[next[right]] = pos }
            if prev[pos] >= 0 { candidate(prev[pos]) }
            candidate(pos)
        }
        var pos = 0
        while pos >= 0 {
            out.append(symbol[pos])
            pos = next[pos]
        }
    }

    // MARK: - Decoding

    public func decode(_ tokens: [Int32], skipSpecialTokens: Bool) -> String {
        var bytes: [UInt8] = []
        for t in tokens where t >= 0 && Int(t) < decoded.count {
            if skipSpecialTokens && specialIDs.contains(t) { continue }
            if let b = decoded[Int(t)] { bytes += b }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// A binary min-heap of merges ordered by rank, then position.
struct MergeHeap {
    struct Entry { var rank: Int32; var pos: Int32; var id: Int32 }
    var items: [Entry] = []

    static func less(_ a: Entry, _ b: Entry) -> Bool { a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos }

    mutating func push(_ e: Entry) {
        items.append(e)
        var i = items.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if !MergeHeap.less(items[i], items[p]) { break }
            items.swapAt(i, p)
            i = p
        }
    }

    mutating func pop() -> Entry? {
        guard let first = items.first else { return nil }
        let last = items.removeLast()
        if items.isEmpty { return first }
        items[0] = last
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < items.count, MergeHeap.less(items[l], items[m]) { m = l }
            if r < items.count, MergeHeap.less(items[r], items[m]) { m = r }
            if m == i { break }
            items.swapAt(i, m)
            i = m
        }
        return first
    }
}

// MARK: - Added tokens

/// Finds added tokens in text as Hugging Face's `AddedVocabulary::find_matches` does: the
/// leftmost match, longest first, then on from its end; `single_word` tokens inside a
/// word are passed over, `lstrip`/`rstrip` take the neighbouring whitespace along.
/// With `skipSpecial` (transformers' `split_special_tokens`), a special token's match is
/// passed over and its text stays text.
struct AddedTokenMatcher: Sendable {
    /// Tokens by their first byte, longest first.
    let byFirstByte: [UInt8: [(bytes: [UInt8], token: AddedToken)]]
    let skipSpecial: Bool

    enum Part: Equatable { case text([UInt8]), token(Int32) }

    init(_ tokens: [AddedToken], skipSpecial: Bool) {
        self.skipSpecial = skipSpecial
        var m: [UInt8: [(bytes: [UInt8], token: AddedToken)]] = [:]
        for t in tokens {
            let b = Array(t.content.utf8)
            guard let first = b.first else { continue }
            m[first, default: []].append((b, t))
        }
        for k in m.keys { m[k]?.sort { $0.bytes.count > $1.bytes.count } }
        byFirstByte = m
    }

    /// The leftmost, longest token occurrence at or after `from`.
    func nextMatch(_ text: [UInt8], from: Int) -> (start: Int, end: Int, token: AddedToken)? {
        var i = from
        while i < text.count {
            if let candidates = byFirstByte[text[i]] {
                for c in candidates where i + c.bytes.count <= text.count && text[i..<(i + c.bytes.count)].elementsEqual(c.bytes) {
                    return (i, i + c.bytes.count, c.token)
                }
            }
            i += 1
        }
        return nil
    }

    /// The text cut into added tokens and the (non-empty) text between them.
    func split(_ text: [UInt8]) -> [Part] {
        if byFirstByte.isEmpty { return text.isEmpty ? [] : [.text(text)] }
        var parts: [Part] = []
        var emitted = 0, searchFrom = 0
        while let m = nextMatch(text, from: searchFrom) {
            searchFrom = m.end
            var start = m.start, stop = m.end
            if skipSpecial && m.token.special { continue }
            if m.token.singleWord {
                let wordBefore = start > 0 && AddedTokenMatcher.isWord(lastScalar(text[..<start]))
                let wordAfter = stop < text.count && AddedTokenMatcher.isWord(firstScalar(text[stop...]))
                if wordBefore || wordAfter { continue }
            }
            if m.token.lstrip {
                var s = start
                while s > 0, let (scalar, len) = lastScalarWithLength(text[..<s]), scalar.properties.isWhitespace { s -= len }
                start = max(s, emitted)
            }
            if m.token.rstrip {
                while stop < text.count, let (scalar, len) = firstScalarWithLength(text[stop...]), scalar.properties.isWhitespace { stop += len }
            }
            if emitted < start { parts.append(.text(Array(text[emitted..<start]))) }
            parts.append(.token(m.token.id))
            emitted = stop
        }
        if emitted < text.count { parts.append(.text(Array(text[emitted...]))) }
        return parts
    }

    /// Rust's `\w`: alphabetic, marks, decimal digits, connector punctuation, join controls.
    static func isWord(_ s: Unicode.Scalar?) -> Bool {
        guard let s else { return false }
        let p = s.properties
        switch p.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
        default: return p.isAlphabetic || p.isJoinControl
        }
    }

    func lastScalar(_ b: ArraySlice<UInt8>) -> Unicode.Scalar? { lastScalarWithLength(b)?.0 }
    func firstScalar(_ b: ArraySlice<UInt8>) -> Unicode.Scalar? { firstScalarWithLength(b)?.0 }

    func firstScalarWithLength(_ b: ArraySlice<UInt8>) -> (Unicode.Scalar, Int)? {
        guard let lead = b.first else { return nil }
        let len = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4
        return String(decoding: b.prefix(len), as: UTF8.self).unicodeScalars.first.map { ($0, len) }
    }

    func lastScalarWithLength(_ b: ArraySlice<UInt8>) -> (Unicode.Scalar, Int)? {
        guard !b.isEmpty else { return nil }
        var start = b.endIndex - 1
        while start > b.startIndex, b[start] & 0xC0 == 0x80 { start -= 1 }
        let len = b.endIndex - start
        return String(decoding: b[start...], as: UTF8.self).unicodeScalars.first.map { ($0, len) }
    }
}
