import Foundation

/// GPT-2's byte-level alphabet: every byte is written as one printable character, so
/// that a BPE over characters is a BPE over bytes. Printable Latin-1 bytes stand for
/// themselves; the other 68 bytes map in byte order to U+0100 onwards.
/// Source: GPT-2's `encoder.py` (`bytes_to_unicode`), as Hugging Face `tokenizers` uses it.
public enum ByteLevel {
    /// The character standing for each byte.
    public static let scalars: [Unicode.Scalar] = {
        var printable = Array(UInt32(0x21)...0x7E) + Array(UInt32(0xA1)...0xAC) + Array(UInt32(0xAE)...0xFF)
        var table = [UInt32](repeating: 0, count: 256)
        for b in printable { table[Int(b)] = b }
        var n: UInt32 = 0
        for b in 0..<256 where !printable.contains(UInt32(b)) {
            table[b] = 256 + n
            printable.append(UInt32(b))
            n += 1
        }
        return table.map { Unicode.Scalar($0) ?? "?" }
    }()

    /// The byte each alphabet character stands for.
    public static let byteOfScalar: [UInt32: UInt8] = {
        var m: [UInt32: UInt8] = [:]
        for (b, s) in scalars.enumerated() { m[s.value] = UInt8(b) }
        return m
    }()

    public static func scalar(of byte: UInt8) -> Unicode.Scalar { scalars[Int(byte)] }

    /// The split pattern of GPT-2, used by a ByteLevel pre-tokenizer with `use_regex`.
    public static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#

    /// The bytes a token's text decodes to: when every character is in the alphabet, the
    /// bytes they stand for; otherwise the text's own UTF-8 (Hugging Face's ByteLevel
    /// decoder does the same, token by token).
    static func decodedBytes(of token: String) -> [UInt8] {
        var out: [UInt8] = []
        for s in token.unicodeScalars {
            guard let b = byteOfScalar[s.value] else { return Array(token.utf8) }
            out.append(b)
        }
        return out
    }
}

/// A Unicode normalization applied to text before pre-tokenization (Hugging Face
/// normalizers `NFC`, `NFD`, `NFKC`, `NFKD`).
public enum TextNormalization: String, Sendable {
    case nfc = "NFC", nfd = "NFD", nfkc = "NFKC", nfkd = "NFKD"

    func apply(_ s: String) -> String {
        switch self {
        case .nfc: return s.precomposedStringWithCanonicalMapping
        case .nfd: return s.decomposedStringWithCanonicalMapping
        case .nfkc: return s.precomposedStringWithCompatibilityMapping
        case .nfkd: return s.decomposedStringWithCompatibilityMapping
        }
    }
}

/// A compiled split pattern.
///
/// Hugging Face `tokenizers` compiles split patterns with Oniguruma. Foundation's
/// NSRegularExpression (ICU) is used here because it gives the same splits for the
/// patterns byte-level tokenizers use: a sweep of every Unicode scalar through five
/// templates under the GPT-2, Qwen2 and Llama 3 patterns found no difference (it covers
/// `\s` on U+000B, U+0085 and U+001C, `\p{L}`, `\p{N}`, the look-ahead `\s+(?!\S)` and
/// case-insensitive contractions such as `'ſ`); `Tests/KATEnvTests/Fixtures/tokenizers`
/// keeps that sweep as a test. Offsets are UTF-16 in NSRegularExpression and are turned
/// back into string indices here.
public final class SplitPattern: @unchecked Sendable {
    // @unchecked: NSRegularExpression is immutable once made and documented as safe to
    // use from several threads at once.
    let regex: NSRegularExpression
    public let pattern: String

    /// - Throws: the message of the regular-expression compiler.
    public init(regex pattern: String) throws {
        self.pattern = pattern
        regex = try NSRegularExpression(pattern: pattern, options: [])
    }

    /// A pattern that matches `literal` exactly.
    public convenience init(literal: String) throws {
        try self.init(regex: NSRegularExpression.escapedPattern(for: literal))
    }

    /// `text` cut at the pattern's matches, in order, matches and the text between them
    /// alike (Hugging Face's `Isolated` behaviour); with `removeMatches`, the matches are
    /// left out (`Removed`). Empty pieces are dropped.
    public func split(_ text: String, removeMatches: Bool = false) -> [String] {
        if text.isEmpty { return [] }
        let utf16 = text.utf16
        var out: [String] = []
        var lastIndex = utf16.startIndex, lastOffset = 0
        func index(_ offset: Int) -> String.Index {
            let i = utf16.index(lastIndex, offsetBy: offset - lastOffset)
            lastIndex = i
            lastOffset = offset
            return i
        }
        // Slices go through the scalar view: String's own subscript would round indices
        // down to grapheme boundaries and cut a letter from its combining marks.
        let scalars = text.unicodeScalars
        var prev = utf16.startIndex
        regex.enumerateMatches(in: text, options: [], range: NSRange(location: 0, length: utf16.count)) { match, _, _ in
            guard let r = match?.range, r.location != NSNotFound else { return }
            let start = index(r.location), end = index(r.location + r.length)
            if prev < start { out.append(String(scalars[prev..<start])) }
            if start < end, !removeMatches { out.append(String(scalars[start..<end])) }
            prev = end
        }
        if prev < text.endIndex { out.append(String(scalars[prev...])) }
        return out
    }
}

/// One step of pre-tokenization.
public enum PreTokenizerStep: Sendable {
    /// Split at a pattern's matches (Hugging Face `Split`, behaviour `Isolated` or `Removed`).
    case split(SplitPattern, removeMatches: Bool)
    /// Hugging Face `ByteLevel`: a space before each piece that does not start with one
    /// when `addPrefixSpace`, then GPT-2's split pattern when `useRegex`; the pieces' bytes
    /// then go to the model. It is always the last step.
    case byteLevel(addPrefixSpace: Bool, splitter: SplitPattern?)

    /// The pieces after this step.
    func apply(_ pieces: [String]) -> [String] {
        switch self {
        case let .split(pattern, remove):
            return pieces.flatMap { pattern.split($0, removeMatches: remove) }
        case let .byteLevel(prefix, splitter):
            return pieces.flatMap { p -> [String] in
                // By scalar, not by Character: " " followed by a combining mark is one Character.
                let q = prefix && p.unicodeScalars.first != " " ? " " + p : p
                return splitter?.split(q) ?? (q.isEmpty ? [] : [q])
            }
        }
    }
}
