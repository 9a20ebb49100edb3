import KATSupport

/// Errors of the model layer; each description names the file, key or tensor at fault.
public enum ModelError: Error, CustomStringConvertible, Equatable {
    case io(path: String, reason: String)
    case badSafetensors(path: String, reason: String)
    case badConfig(source: String, key: String, reason: String)
    case missingTensor(path: String, name: String)
    case shapeMismatch(path: String, name: String, expected: [Int], found: [Int])
    case badInput(reason: String)
    /// A file could not be written (disk full, read-only, permission).
    case file(FileFault)

    public var description: String {
        switch self {
        case let .io(path, reason): return "\(path): \(reason)"
        case let .badSafetensors(path, reason): return "\(path): not a valid safetensors file: \(reason)"
        case let .badConfig(source, key, reason):
            return key.isEmpty ? "\(source): \(reason)" : "\(source): key \(key): \(reason)"
        case let .missingTensor(path, name): return "\(path): missing tensor \(name)"
        case let .shapeMismatch(path, name, expected, found):
            return "\(path): tensor \(name) has shape \(found), the config needs \(expected)"
        case let .badInput(reason): return reason
        case let .file(fault): return fault.description
        }
    }
}
