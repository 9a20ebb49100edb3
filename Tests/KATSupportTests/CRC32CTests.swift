import XCTest
import KATSupport

final class CRC32CTests: XCTestCase {
    /// The check values of RFC 3720 appendix B.4 (iSCSI's CRC-32C) and the standard
    /// "123456789" check value of the Castagnoli polynomial.
    func testCRC32CGivesThePublishedCheckValues() {
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
        XCTAssertEqual(CRC32C.checksum((0..<32).map { UInt8($0) }), 0x46DD_794E)
        XCTAssertEqual(CRC32C.checksum([UInt8]()), 0)
    }

    /// The masked CRC of "123456789" as TensorBoard's own Python reader computes it
    /// (`tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c`, 0xc78ab0e5),
    /// so records written here pass its check.
    func testMaskedCRCMatchesTensorBoardsReader() {
        XCTAssertEqual(CRC32C.masked(CRC32C.checksum(Array("123456789".utf8))), 0xC78A_B0E5)
    }
}
