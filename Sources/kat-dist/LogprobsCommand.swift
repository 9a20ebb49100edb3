import Foundation
import KATModel
import KATDist
import KATSupport

/// A failure at run time (bad input file, model directory, I/O): exit code 1.
struct CommandFailure: Error, CustomStringConvertible {
    var description: String
}

/// `kat-dist logprobs`: next-token log-probs and entropies of every position but the
/// first, computed by a model directory, for each trajectory of a JSONL file.
enum LogprobsCommand {
    static let usage = """
    Usage: kat-dist logprobs --model DIR --input FILE.jsonl [--output FILE] [--temperature T] [--max-tokens N]
                             [--progress MODE]

    Scores every token of each input line with the model at DIR and writes one JSON line per
    input line, in order:
      {"id": ..., "logprobs": [null, ...], "entropies": [null, ...]}
    logprobs[t] = log pi_T(tokens[t] | tokens[<t]); entropies[t] is the entropy of that
    distribution; index 0 is null. Masks and other fields of the input are ignored.

    Options:
      --model DIR        Hugging Face model directory of GPT-2, Llama or Qwen2 (config.json, model.safetensors);
                         a checkpoint, RUN/checkpoints/latest or a run directory work too
      --input FILE       trajectories, JSON Lines with "id" and "tokens" (Docs/formats.md)
      --output FILE      where to write (default: standard output); written whole or not at all
      --temperature T    sampling temperature of the scored policy, > 0 (default 1)
      --max-tokens N     tokens per forward pass (default 16384)
    \(ProgressDisplay.help(column: 21))
    Progress goes to standard error.
    """

    static func run(_ args: [String]) throws {
        let specs = [OptionSpec(name: "model", takesValue: true), OptionSpec(name: "input", takesValue: true),
                     OptionSpec(name: "output", takesValue: true), OptionSpec(name: "temperature", takesValue: true),
                     OptionSpec(name: "max-tokens", takesValue: true)] + ProgressDisplay.options
        let a = try ParsedArguments.parse(args, specs: specs, command: "logprobs")
        if a.has("help") { print(usage); return }
        _ = try a.required("model", command: "logprobs")
        let input = try a.required("input", command: "logprobs")
        let tau = try a.double("temperature", command: "logprobs", range: 1e-6...1e6) ?? 1
        let maxTokens = try a.int("max-tokens", command: "logprobs", range: 1...100_000_000) ?? 16384
        guard FileManager.default.fileExists(atPath: input) else {
            throw UsageError(description: "kat-dist logprobs: --input \(input): no such file")
        }
        let output = try checkedOutputOption(a, command: "logprobs")
        let model = try loadModelOption(a, command: "logprobs")
        model.keepsHeadLogits = false // scoring only: no backward follows, so no logits are kept
        let lines = try readTokenLines(input, vocabSize: model.config.vocabSize, maxPositions: model.config.nPositions)
        let display = try ProgressDisplay(a, command: "logprobs", fd: 2)
        let clock = PhaseClock(start: monotonicSeconds(), startStep: 0)

        var out = ""
        out.reserveCapacity(lines.reduce(0) { $0 + $1.tokens.count } * 24)
        var start = 0
        while start < lines.count {
            var end = start, tokens = 0
            while end < lines.count, end == start || tokens + lines[end].tokens.count <= maxTokens {
                tokens += lines[end].tokens.count
                end += 1
            }
            let batch = try PackedBatch(sequences: lines[start..<end].map(\.tokens), vocabSize: model.config.vocabSize,
                                        maxPositions: model.config.nPositions)
            let r = model.forward(batch, temperature: Float(tau))
            var row = 0
            for line in lines[start..<end] {
                out += "{\"id\":" + line.id.serialized + ",\"logprobs\":["
                for t in 0..<line.tokens.count { out += t == 0 ? "null" : "," + number(r.logprobs[row + t]) }
                out += "],\"entropies\":["
                for t in 0..<line.tokens.count { out += t == 0 ? "null" : "," + number(r.entropies[row + t]) }
                out += "]}\n"
                row += line.tokens.count
            }
            start = end
            display.status(String(format: "scoring %d lines  %.0f%%  %@", lines.count, 100 * Double(end) / Double(lines.count),
                                  clock.leftText(done: end, total: lines.count, now: monotonicSeconds()) as NSString),
                           final: end == lines.count)
        }
        display.finish()
        if let path = output {
            do { try FileWriting.writeAtomically(Data(out.utf8), to: path) } catch { throw CommandFailure(description: "\(error)") }
        } else {
            FileHandle.standardOutput.write(Data(out.utf8))
        }
    }

    static func number(_ f: Float) -> String { f.isFinite ? "\(f)" : "null" }

    struct TokenLine { var id: JSON; var tokens: [Int] }

    /// Reads `id` and `tokens` of every line; the first fault stops with file, line, field.
    static func readTokenLines(_ path: String, vocabSize: Int, maxPositions: Int) throws -> [TokenLine] {
        guard let data = FileManager.default.contents(atPath: path) else { throw CommandFailure(description: "\(path): cannot read the file") }
        var out: [TokenLine] = []
        var lineNo = 0
        for raw in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNo += 1
            if raw.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            func bad(_ field: String, _ why: String) -> CommandFailure {
                CommandFailure(description: "\(path):\(lineNo): \(field.isEmpty ? "" : "field \(field): ")\(why)")
            }
            let obj: JSON
            do { obj = try JSON.parse(Array(raw)) } catch { throw bad("", "not valid JSON (\(error))") }
            guard obj.objectMembers != nil else { throw bad("", "a line must be a JSON object") }
            let id = obj["id"] ?? .int(Int64(lineNo))
            switch id { case .string, .int: break; default: throw bad("id", "must be a string or an integer, got \(id.typeName)") }
            guard let toks = obj["tokens"] else { throw bad("tokens", "missing") }
            guard let arr = toks.arrayValue else { throw bad("tokens", "must be an array of token ids, got \(toks.typeName)") }
            if arr.isEmpty { throw bad("tokens", "is empty") }
            if arr.count > maxPositions { throw bad("tokens", "has \(arr.count) tokens, more than n_positions (\(maxPositions))") }
            var tokens: [Int] = []
            tokens.reserveCapacity(arr.count)
            for (k, t) in arr.enumerated() {
                guard case let .int(v) = t else { throw bad("tokens", "entry \(k) must be an integer, got \(t.typeName)") }
                guard v >= 0, v < vocabSize else { throw bad("tokens", "entry \(k) = \(v) is outside the vocabulary (0..<\(vocabSize))") }
                tokens.append(Int(v))
            }
            out.append(TokenLine(id: id, tokens: tokens))
        }
        if out.isEmpty { throw CommandFailure(description: "\(path): no trajectories in the file") }
        return out
    }
}
