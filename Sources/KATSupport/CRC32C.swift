/// CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, initial value and final XOR
/// 0xFFFFFFFF), the checksum of TFRecord framing in TensorBoard event files.
///
/// Written here, table-driven, because kat-dist takes no packages and the toolchain on
/// Linux offers no CRC-32C (zlib's `crc32` is the other polynomial, 0xEDB88320). Check
/// value: the CRC-32C of the ASCII bytes "123456789" is 0xE3069283 (RFC 3720, B.4).
public enum CRC32C {
    /// One entry per byte value: the CRC register after shifting that byte through.
    static let table: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    /// The CRC-32C of `bytes`.
    public static func checksum<Bytes: Sequence>(_ bytes: Bytes) -> UInt32 where Bytes.Element == UInt8 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in bytes { crc = table[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }

    /// TFRecord's masked form of a CRC: rotated right by 15 bits plus 0xA282EAD8, so that
    /// a CRC stored inside checksummed data does not checksum to a fixed value.
    public static func masked(_ crc: UInt32) -> UInt32 {
        ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
    }
}
