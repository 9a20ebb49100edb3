import Foundation
import KATSupport

/// Reads a model directory's tokenizer, as `transformers.AutoTokenizer` would:
///
/// - `tokenizer.json` (Hugging Face `tokenizers`): a BPE model with a ByteLevel
///   pre-tokenizer (alone, or after `Split` patterns as Qwen2 and Llama 3 have), NFC/NFD/
///   NFKC/NFKD normalizers, added tokens and a ByteLevel decoder;
/// - else GPT-2's `vocab.json` + `merges.txt` (GPT-2's split pattern; `<|endoftext|>` is
///   BOS, EOS and the unknown token unless `tokenizer_config.json` or
///   `special_tokens_map.json` name others);
/// - else kat-dist's `ByteTokenizer`.
///
/// Special ids: `bos_token_id`, `eos_token_id` (an id or a list) and `sep_token_id` of
/// `config.json` when given, else the tokens `bos_token`, `eos_token`, `sep_token` that
/// `special_tokens_map.json` or `tokenizer_config.json` name; without a separator token the
/// separator is the text "\n" encoded. `split_special_tokens` in `tokenizer_config.json`
/// keeps special-token text in the input as text, as transformers does.
public enum TokenizerLoader {
    /// The tokenizer files a checkpoint carries over from the model it started from.
    public static let fileNames = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json"]

    /// Whether `directory` holds a tokenizer of its own (any file but the configs).
    public static func hasTokenizerFiles(_ directory: String) -> Bool {
        ["tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model"].contains { exists(directory + "/" + $0) }
    }

    /// The tokenizer of a model directory.
    /// - Throws: `TokenizerError` naming the file and the fault: unreadable or malformed
    ///   files, components kat-dist does not implement, special tokens the vocabulary lacks,
    ///   special ids in `config.json` that contradict the byte tokenizer of a directory
    ///   without tokenizer files.
    public static func load(directory: String) throws(TokenizerError) -> any Tokenizer {
        let names = try SpecialNames(directory: directory)
        let ids = try ConfigIDs(directory: directory)
        let json = directory + "/tokenizer.json", vocab = directory + "/vocab.json", merges = directory + "/merges.txt"
        var bpe: BPETokenizer
        if exists(json) {
            bpe = try TokenizerJSON.read(path: json, names: names)
        } else if exists(vocab) || exists(merges) {
            guard exists(vocab) else { throw .badFile(path: vocab, reason: "missing: \(merges) needs the vocabulary beside it") }
            guard exists(merges) else { throw .badFile(path: merges, reason: "missing: \(vocab) needs the merges beside it") }
            bpe = try GPT2Files.read(vocab: vocab, merges: merges, names: names)
        } else if exists(directory + "/tokenizer.model") {
            throw .unsupported(path: directory + "/tokenizer.model", component: "SentencePiece model",
                               reason: "kat-dist reads byte-level BPE tokenizers (tokenizer.json, or vocab.json and merges.txt)")
        } else {
            try ids.checkByteTokenizer(configPath: directory + "/config.json")
            return ByteTokenizer()
        }
        bpe.specials = try resolveSpecials(bpe, names: names, ids: ids, configPath: directory + "/config.json")
        return bpe
    }

    /// The tokenizer files a checkpoint of a model that started from `directory` carries:
    /// the directory's own files as they are, or, for a directory without tokenizer files
    /// (or a model made from scratch, `directory` nil), the byte tokenizer's Hugging Face
    /// files when the model's vocabulary covers them; none otherwise.
    public static func checkpointFiles(directory: String?, vocabSize: Int) -> [String: Data] {
        if let directory, hasTokenizerFiles(directory) {
            var files: [String: Data] = [:]
            for name in fileNames { if let d = FileManager.default.contents(atPath: directory + "/" + name) { files[name] = d } }
            return files
        }
        if let directory, (try? ConfigIDs(directory: directory).checkByteTokenizer(configPath: "")) == nil { return [:] }
        return vocabSize >= ByteTokenizer.size ? ByteTokenizer.huggingFaceFiles() : [:]
    }

    /// The `vocab_size` of the directory's `config.json`, whatever the model family.
    /// - Throws: `TokenizerError.badFile` naming config.json when it is missing or lacks it.
    public static func modelVocabularySize(directory: String) throws(TokenizerError) -> Int {
        let path = directory + "/config.json"
        guard exists(path) else { throw .badFile(path: path, reason: "no such file") }
        guard let v = try readJSON(path)["vocab_size"]?.intValue, v > 0 else {
            throw .badFile(path: path, reason: "needs a positive integer vocab_size")
        }
        return v
    }

    static func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

    static func readJSON(_ path: String) throws(TokenizerError) -> JSON {
        guard let data = FileManager.default.contents(atPath: path) else { throw .badFile(path: path, reason: "cannot read the file") }
        do { return try JSON.parse(Array(data)) } catch { throw .badFile(path: path, reason: "not valid JSON (\(error))") }
    }

    /// The special ids of a BPE tokenizer from the config's ids and the files' names.
    static func resolveSpecials(_ t: BPETokenizer, names: SpecialNames, ids: ConfigIDs, configPath: String) throws(TokenizerError) -> SpecialTokens {
        func check(_ key: String, _ id: Int) throws(TokenizerError) -> Int32 {
            guard id >= 0, id < t.vocabularySize else {
                throw .badSpecial(path: configPath, key: key, reason: "id \(id) is not a token of \(t.origin) (ids 0..<\(t.vocabularySize))")
            }
            return Int32(id)
        }
        func named(_ role: String) throws(TokenizerError) -> Int32? {
            guard let (text, source) = names.token[role] else { return nil }
            guard let id = t.id(of: text) else {
                throw .badSpecial(path: source, key: role, reason: "\"\(text)\" is not a token of \(t.origin)")
            }
            return id
        }
        var bos: Int32?
        if let b = ids.bos { bos = try check("bos_token_id", b) } else { bos = try named("bos_token") }
        var ends: [Int32] = []
        for e in ids.eos { ends.append(try check("eos_token_id", e)) }
        let namedEOS = try named("eos_token")
        if ends.isEmpty, let namedEOS { ends = [namedEOS] }
        // The token the files call EOS is written after answers when the config lists it too.
        if let namedEOS, let k = ends.firstIndex(of: namedEOS), k > 0 { ends.remove(at: k); ends.insert(namedEOS, at: 0) }
        var separator: [Int32]
        if let s = ids.sep { separator = [try check("sep_token_id", s)] } else if let s = try named("sep_token") { separator = [s] } else {
            separator = t.encode("\n")
        }
        var pad: Int32?
        if let p = ids.pad { pad = try check("pad_token_id", p) } else { pad = try named("pad_token") }
        return SpecialTokens(bos: bos, endTokens: ends, separator: separator, pad: pad)
    }
}

// MARK: - Special tokens named by the files

/// Special tokens by role ("bos_token", ...), as `tokenizer_config.json` and
/// `special_tokens_map.json` name them (the latter wins, as in transformers), with
/// `split_special_tokens`.
struct SpecialNames {
    static let roles = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]
    /// role -> (text, file that named it)
    var token: [String: (String, String)] = [:]
    var additional: [String] = []
    var splitSpecialTokens = false
    /// Whether either file exists (GPT-2's files default to <|endoftext|> otherwise).
    var anyFile = false
    /// `add_prefix_space` of tokenizer_config.json (GPT-2's files).
    var addPrefixSpace = false
    /// Tokens `added_tokens_decoder` lists, with their flags (GPT-2's files).
    var addedDecoder: [AddedToken] = []

    init(directory: String) throws(TokenizerError) {
        for file in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path = directory + "/" + file
            guard TokenizerLoader.exists(path) else { continue }
            anyFile = true
            let j = try TokenizerLoader.readJSON(path)
            guard j.objectMembers != nil else { throw .badFile(path: path, reason: "not a JSON object") }
            for role in SpecialNames.roles {
                guard let v = j[role], !v.isNull else { continue }
                guard let text = v.stringValue ?? v["content"]?.stringValue else {
                    throw .badSpecial(path: path, key: role, reason: "must be a string or an object with a string \"content\", got \(v.serialized.prefix(80))")
                }
                token[role] = (text, path)
            }
            if let extra = j["additional_special_tokens"]?.arrayValue {
                additional = extra.compactMap { $0.stringValue ?? $0["content"]?.stringValue }
            }
            if file == "tokenizer_config.json" {
                splitSpecialTokens = j["split_special_tokens"]?.boolValue ?? false
                addPrefixSpace = j["add_prefix_space"]?.boolValue ?? false
                for (key, v) in j["added_tokens_decoder"]?.objectMembers ?? [] {
                    guard let id = Int32(key), let content = v["content"]?.stringValue else {
                        throw .badFile(path: path, reason: "added_tokens_decoder entry \(key) needs an integer key and a string \"content\"")
                    }
                    addedDecoder.append(AddedToken(content: content, id: id, special: v["special"]?.boolValue ?? false,
                                                   singleWord: v["single_word"]?.boolValue ?? false, lstrip: v["lstrip"]?.boolValue ?? false,
                                                   rstrip: v["rstrip"]?.boolValue ?? false, normalized: v["normalized"]?.boolValue ?? false))
                }
            }
        }
    }
}

/// The special ids `config.json` gives.
struct ConfigIDs {
    var bos: Int?
    var eos: [Int] = []
    var sep: Int?
    var pad: Int?

    init(directory: String) throws(TokenizerError) {
        let path = directory + "/config.json"
        guard TokenizerLoader.exists(path) else { return }
        let j = try TokenizerLoader.readJSON(path)
        func id(_ key: String) throws(TokenizerError) -> Int? {
            guard let v = j[key], !v.isNull else { return nil }
            guard let i = v.intValue else { throw .badSpecial(path: path, key: key, reason: "must be an integer, got \(v.serialized.prefix(80))") }
            return i
        }
        bos = try id("bos_token_id")
        sep = try id("sep_token_id")
        pad = try id("pad_token_id")
        if let list = j["eos_token_id"]?.arrayValue {
            for v in list {
                guard let i = v.intValue else { throw .badSpecial(path: path, key: "eos_token_id", reason: "must hold integers, got \(v.serialized.prefix(80))") }
                eos.append(i)
            }
        } else if let e = try id("eos_token_id") {
            eos = [e]
        }
    }

    /// A directory without tokenizer files takes the byte tokenizer, whose specials are
    /// fixed: ids in config.json must agree (a model made for another tokenizer whose files
    /// were left behind is refused instead of fed bytes).
    func checkByteTokenizer(configPath: String) throws(TokenizerError) {
        let expected: [(String, [Int], Int32)] = [("bos_token_id", bos.map { [$0] } ?? [], ByteTokenizer.bos),
                                                  ("eos_token_id", eos, ByteTokenizer.eos),
                                                  ("sep_token_id", sep.map { [$0] } ?? [], ByteTokenizer.sep),
                                                  ("pad_token_id", pad.map { [$0] } ?? [], ByteTokenizer.pad)]
        for (key, given, want) in expected where given.contains(where: { $0 != Int(want) }) {
            throw .badSpecial(path: configPath, key: key,
                              reason: "is \(given.map(String.init).joined(separator: ", ")), but the directory has no tokenizer files, and kat-dist's byte tokenizer has \(want) there: add the model's tokenizer (tokenizer.json, or vocab.json and merges.txt)")
        }
    }
}

// MARK: - tokenizer.json

/// Reads Hugging Face `tokenizers`' `tokenizer.json`.
enum TokenizerJSON {
    static func read(path: String, names: SpecialNames) throws(TokenizerError) -> BPETokenizer {
        let j = try TokenizerLoader.readJSON(path)
        guard j.objectMembers != nil else { throw .badFile(path: path, reason: "not a JSON object") }
        guard let model = j["model"], model.objectMembers != nil else { throw .badFile(path: path, reason: "missing \"model\"") }
        let type = model["type"]?.stringValue ?? (model["merges"] != nil ? "BPE" : "?")
        guard type == "BPE" else {
            throw .unsupported(path: path, component: "model type \(type)", reason: "kat-dist reads byte-level BPE tokenizers")
        }
        if let d = model["dropout"], !d.isNull, d.doubleValue != 0 {
            throw .unsupported(path: path, component: "model.dropout", reason: "BPE dropout samples its merges; kat-dist needs deterministic encoding")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let v = model[key], !v.isNull, v.stringValue != "" {
                throw .unsupported(path: path, component: "model.\(key)", reason: "not used by byte-level BPE")
            }
        }
        if model["byte_fallback"]?.boolValue == true {
            throw .unsupported(path: path, component: "model.byte_fallback", reason: "not used by byte-level BPE")
        }
        let vocab = try readVocab(model["vocab"], path: path, field: "model.vocab")
        guard let mergeList = model["merges"]?.arrayValue else { throw .badFile(path: path, reason: "model.merges must be an array") }
        var merges: [(String, String)] = []
        merges.reserveCapacity(mergeList.count)
        for (k, m) in mergeList.enumerated() {
            if let pair = m.arrayValue, pair.count == 2, let a = pair[0].stringValue, let b = pair[1].stringValue {
                merges.append((a, b))
            } else if let s = m.stringValue, let pair = GPT2Files.pair(s) {
                merges.append(pair)
            } else {
                throw .badFile(path: path, reason: "model.merges entry \(k) must be \"a b\" or [\"a\", \"b\"], got \(m.serialized.prefix(80))")
            }
        }
        let normalizations = try readNormalizer(j["normalizer"], path: path)
        let steps = try readPreTokenizer(j["pre_tokenizer"], path: path)
        try checkDecoder(j["decoder"], path: path)
        var added: [AddedToken] = []
        for (k, t) in (j["added_tokens"]?.arrayValue ?? []).enumerated() {
            guard let content = t["content"]?.stringValue else {
                throw .badFile(path: path, reason: "added_tokens entry \(k) lacks a string \"content\"")
            }
            added.append(AddedToken(content: content, id: -1, special: t["special"]?.boolValue ?? false,
                                    singleWord: t["single_word"]?.boolValue ?? false, lstrip: t["lstrip"]?.boolValue ?? false,
                                    rstrip: t["rstrip"]?.boolValue ?? false, normalized: t["normalized"]?.boolValue ?? true))
        }
        return try BPETokenizer(origin: "byte-level BPE from \(path)", vocab: vocab, merges: merges,
                                addedTokens: assignIDs(added, vocab: vocab), normalizations: normalizations, steps: steps,
                                unknownToken: model["unk_token"]?.stringValue, fuseUnknown: model["fuse_unk"]?.boolValue ?? false,
                                ignoreMerges: model["ignore_merges"]?.boolValue ?? false, splitSpecialTokens: names.splitSpecialTokens,
                                specials: SpecialTokens(bos: nil, endTokens: [], separator: [], pad: nil))
    }

    /// Ids of added tokens as `tokenizers` gives them when it reads the file (the ids
    /// written in it are not used): the token's id in the vocabulary when it is there,
    /// else the next id after the vocabulary, in list order. Source: `AddedVocabulary::add_tokens`.
    static func assignIDs(_ tokens: [AddedToken], vocab: [(String, Int32)]) -> [AddedToken] {
        var byText: [[UInt8]: Int32] = [:]
        for (t, id) in vocab { byText[Array(t.utf8)] = id }
        var addedByText: [[UInt8]: Int32] = [:]
        var next = Int32(vocab.count)
        var out: [AddedToken] = []
        for var t in tokens where !t.content.isEmpty {
            let key = Array(t.content.utf8)
            if let id = addedByText[key] ?? byText[key] {
                t.id = id
            } else {
                t.id = next
                next += 1
            }
            addedByText[key] = t.id
            out.removeAll { $0.id == t.id }
            out.append(t)
        }
        return out
    }

    static func readVocab(_ v: JSON?, path: String, field: String) throws(TokenizerError) -> [(String, Int32)] {
        guard let members = v?.objectMembers else { throw .badFile(path: path, reason: "\(field) must be an object of token -> id") }
        var out: [(String, Int32)] = []
        out.reserveCapacity(members.count)
        for (token, id) in members {
            guard let i = id.intValue, i >= 0, i < Int(Int32.max) else {
                throw .badFile(path: path, reason: "\(field): the id of \"\(token.prefix(40))\" must be a non-negative integer, got \(id.serialized.prefix(40))")
            }
            out.append((token, Int32(i)))
        }
        return out
    }

    static func readNormalizer(_ n: JSON?, path: String) throws(TokenizerError) -> [TextNormalization] {
        guard let n, !n.isNull else { return [] }
        let type = n["type"]?.stringValue ?? "?"
        if type == "Sequence" {
            var out: [TextNormalization] = []
            for inner in n["normalizers"]?.arrayValue ?? [] { out += try readNormalizer(inner, path: path) }
            return out
        }
        guard let form = TextNormalization(rawValue: type) else {
            throw .unsupported(path: path, component: "normalizer \(type)", reason: "kat-dist implements NFC, NFD, NFKC, NFKD and Sequence of them")
        }
        return [form]
    }

    static func readPreTokenizer(_ p: JSON?, path: String) throws(TokenizerError) -> [PreTokenizerStep] {
        var steps: [PreTokenizerStep] = []
        func add(_ p: JSON) throws(TokenizerError) {
            let type = p["type"]?.stringValue ?? "?"
            switch type {
            case "Sequence":
                for inner in p["pretokenizers"]?.arrayValue ?? [] { try add(inner) }
            case "ByteLevel":
                let useRegex = p["use_regex"]?.boolValue ?? true
                var splitter: SplitPattern?
                if useRegex {
                    do { splitter = try SplitPattern(regex: ByteLevel.gpt2Pattern) } catch {
                        throw .unsupported(path: path, component: "ByteLevel split pattern", reason: "\(error)")
                    }
                }
                steps.append(.byteLevel(addPrefixSpace: p["add_prefix_space"]?.boolValue ?? true, splitter: splitter))
            case "Split":
                let behavior = p["behavior"]?.stringValue ?? "?"
                guard behavior == "Isolated" || behavior == "Removed" else {
                    throw .unsupported(path: path, component: "Split behavior \(behavior)", reason: "kat-dist implements Isolated and Removed")
                }
                if p["invert"]?.boolValue == true {
                    throw .unsupported(path: path, component: "Split invert", reason: "kat-dist implements invert: false")
                }
                let pattern: SplitPattern
                do {
                    if let r = p["pattern"]?["Regex"]?.stringValue {
                        pattern = try SplitPattern(regex: r)
                    } else if let s = p["pattern"]?["String"]?.stringValue {
                        pattern = try SplitPattern(literal: s)
                    } else {
                        throw TokenizerError.badFile(path: path, reason: "Split needs a pattern {\"Regex\": ...} or {\"String\": ...}")
                    }
                } catch let e as TokenizerError { throw e } catch {
                    throw .unsupported(path: path, component: "Split pattern", reason: "does not compile: \(error)")
                }
                steps.append(.split(pattern, removeMatches: behavior == "Removed"))
            default:
                throw .unsupported(path: path, component: "pre_tokenizer \(type)", reason: "kat-dist implements ByteLevel, Split and Sequence of them")
            }
        }
        guard let p, !p.isNull else {
            throw .unsupported(path: path, component: "pre_tokenizer null", reason: "a byte-level BPE needs a ByteLevel pre-tokenizer")
        }
        try add(p)
        guard let last = steps.last, case .byteLevel = last,
              steps.dropLast().allSatisfy({ if case .split = $0 { return true } else { return false } }) else {
            throw .unsupported(path: path, component: "pre_tokenizer", reason: "kat-dist reads byte-level BPE: Split steps, then one ByteLevel step last")
        }
        return steps
    }

    static func checkDecoder(_ d: JSON?, path: String) throws(TokenizerError) {
        guard let d, !d.isNull else {
            throw .unsupported(path: path, component: "decoder null", reason: "a byte-level BPE needs a ByteLevel decoder")
        }
        let type = d["type"]?.stringValue ?? "?"
        if type == "Sequence", let inner = d["decoders"]?.arrayValue, inner.count == 1 { return try checkDecoder(inner[0], path: path) }
        guard type == "ByteLevel" else {
            throw .unsupported(path: path, component: "decoder \(type)", reason: "kat-dist implements the ByteLevel decoder")
        }
    }
}

// MARK: - GPT-2's vocab.json + merges.txt

/// Reads GPT-2's `vocab.json` and `merges.txt` as transformers' GPT-2 tokenizer does:
/// GPT-2's split pattern, no prefix space unless `tokenizer_config.json` sets
/// `add_prefix_space`, the named special tokens added (by default `<|endoftext|>`).
enum GPT2Files {
    static func read(vocab vocabPath: String, merges mergesPath: String, names: SpecialNames) throws(TokenizerError) -> BPETokenizer {
        let vocab = try TokenizerJSON.readVocab(try TokenizerLoader.readJSON(vocabPath), path: vocabPath, field: "the vocabulary")
        guard let data = FileManager.default.contents(atPath: mergesPath) else {
            throw .badFile(path: mergesPath, reason: "cannot read the file")
        }
        var merges: [(String, String)] = []
        // Lines by bytes: as Characters, "\r\n" would be one and never split at "\n".
        for (k, raw) in data.split(separator: 0x0A, omittingEmptySubsequences: false).enumerated() {
            let bytes = raw.last == 0x0D ? raw.dropLast() : raw
            guard let line = String(validating: bytes, as: UTF8.self) else {
                throw .badFile(path: mergesPath, reason: "line \(k + 1) is not UTF-8 text")
            }
            if line.isEmpty || line.hasPrefix("#version") { continue }
            guard let pair = pair(line) else {
                throw .badFile(path: mergesPath, reason: "line \(k + 1): a merge is two tokens separated by one space, got \"\(line.prefix(80))\"")
            }
            merges.append(pair)
        }
        var specials: [String] = []
        if names.anyFile {
            for role in SpecialNames.roles { if let (t, _) = names.token[role] { specials.append(t) } }
            specials += names.additional
        } else {
            specials = ["<|endoftext|>"]
        }
        var added = names.addedDecoder.sorted { $0.id < $1.id }
        for s in specials where !added.contains(where: { $0.content == s }) { added.append(AddedToken(content: s, id: -1, special: true)) }
        let steps: [PreTokenizerStep]
        do { steps = [.byteLevel(addPrefixSpace: names.addPrefixSpace, splitter: try SplitPattern(regex: ByteLevel.gpt2Pattern))] } catch {
            throw .unsupported(path: vocabPath, component: "GPT-2 split pattern", reason: "\(error)")
        }
        return try BPETokenizer(origin: "byte-level BPE from \(vocabPath) and merges.txt", vocab: vocab, merges: merges,
                                addedTokens: TokenizerJSON.assignIDs(added, vocab: vocab), normalizations: [], steps: steps,
                                unknownToken: nil, fuseUnknown: false, ignoreMerges: false, splitSpecialTokens: names.splitSpecialTokens,
                                specials: SpecialTokens(bos: nil, endTokens: [], separator: [], pad: nil))
    }

    /// "a b" -> ("a", "b"); nil unless exactly two non-empty parts.
    static func pair(_ s: String) -> (String, String)? {
        // By scalar: a space followed by a combining mark is one Character.
        let parts = s.unicodeScalars.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else { return nil }
        return (String(String.UnicodeScalarView(parts[0])), String(String.UnicodeScalarView(parts[1])))
    }
}

extension BPETokenizer {
    /// The id of a token's text: an added token's, else the vocabulary's.
    func id(of text: String) -> Int32? {
        let key = Array(text.utf8)
        for m in [rawAdded, normalizedAdded] {
            if let first = key.first, let hit = m.byFirstByte[first]?.first(where: { $0.bytes == key }) { return hit.token.id }
        }
        return vocab[key]
    }
}
