/// A usage error: one line on stderr and exit code 2.
struct UsageError: Error, CustomStringConvertible {
    var description: String
}

/// Options of one subcommand, parsed by hand: `--name value`, `--name=value`, flags.
struct OptionSpec {
    var name: String
    var takesValue: Bool
    var repeatable = false
}

struct ParsedArguments {
    var values: [String: [String]] = [:]
    var flags: Set<String> = []

    func value(_ name: String) -> String? { values[name]?.last }
    func all(_ name: String) -> [String] { values[name] ?? [] }
    func has(_ name: String) -> Bool { flags.contains(name) || values[name] != nil }

    /// Parses arguments against the specs. `--help` and `-h` become the flag "help".
    static func parse(_ args: [String], specs: [OptionSpec], command: String) throws(UsageError) -> ParsedArguments {
        var out = ParsedArguments()
        var i = 0
        let byName = Dictionary(uniqueKeysWithValues: specs.map { ($0.name, $0) })
        let hint = "(see kat-dist \(command) --help)"
        while i < args.count {
            let a = args[i]
            i += 1
            if a == "--help" || a == "-h" { out.flags.insert("help"); continue }
            guard a.hasPrefix("--"), a.count > 2 else {
                throw UsageError(description: "kat-dist \(command): unexpected argument '\(a)' \(hint)")
            }
            var name = String(a.dropFirst(2))
            var inline: String?
            if let eq = name.firstIndex(of: "=") {
                inline = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            guard let spec = byName[name] else {
                throw UsageError(description: "kat-dist \(command): unknown option --\(name) \(hint)")
            }
            if spec.takesValue {
                let v: String
                if let inline { v = inline } else {
                    guard i < args.count, !(args[i].hasPrefix("--") && args[i].count > 2) else {
                        throw UsageError(description: "kat-dist \(command): option --\(name) needs a value \(hint)")
                    }
                    v = args[i]
                    i += 1
                }
                if out.values[name] != nil, !spec.repeatable {
                    throw UsageError(description: "kat-dist \(command): option --\(name) given twice")
                }
                out.values[name, default: []].append(v)
            } else {
                if inline != nil { throw UsageError(description: "kat-dist \(command): option --\(name) takes no value") }
                out.flags.insert(name)
            }
        }
        return out
    }

    func required(_ name: String, command: String) throws(UsageError) -> String {
        guard let v = value(name) else {
            throw UsageError(description: "kat-dist \(command): missing required option --\(name) (see kat-dist \(command) --help)")
        }
        return v
    }

    func double(_ name: String, command: String, range: ClosedRange<Double>) throws(UsageError) -> Double? {
        guard let s = value(name) else { return nil }
        guard let d = Double(s), d.isFinite, range.contains(d) else {
            throw UsageError(description: "kat-dist \(command): --\(name) must be a number in [\(range.lowerBound), \(range.upperBound)], got '\(s)'")
        }
        return d
    }

    func int(_ name: String, command: String, range: ClosedRange<Int>) throws(UsageError) -> Int? {
        guard let s = value(name) else { return nil }
        guard let d = Int(s), range.contains(d) else {
            throw UsageError(description: "kat-dist \(command): --\(name) must be an integer in [\(range.lowerBound), \(range.upperBound)], got '\(s)'")
        }
        return d
    }
}
