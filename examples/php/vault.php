<?php
// Stores a field encrypted with the data key that unlocker delivered to this PHP-FPM pool, and reads it
// back. Tokens are the same as unlocker.client's: "uk1:<key id>:<base64(nonce || ciphertext || tag)>",
// AES-256-GCM, with associated data binding the value to its table, column and row.

function unlocker_keyring(): ?array {
    $dir = getenv('CREDENTIALS_DIRECTORY');
    $data = $dir ? @file_get_contents($dir . '/dek') : false;
    if ($data === false || $data === '') {
        return null;
    }
    $doc = json_decode($data, true);
    $keys = [];
    foreach ($doc['keys'] as $k) {
        $keys[(int)$k['id']] = base64_decode($k['key'], true);
    }
    return ['primary' => (int)$doc['primary'], 'keys' => $keys];
}

function unlocker_aad(string $table, string $column, string $row): string {
    return "unlocker field v1\0" . $table . "\0" . $column . "\0" . $row;
}

function unlocker_encrypt(array $ring, string $plain, string $aad): string {
    $iv = random_bytes(12);
    $ct = openssl_encrypt($plain, 'aes-256-gcm', $ring['keys'][$ring['primary']], OPENSSL_RAW_DATA, $iv, $tag, $aad, 16);
    return 'uk1:' . $ring['primary'] . ':' . base64_encode($iv . $ct . $tag);
}

function unlocker_decrypt(array $ring, string $token, string $aad): string {
    [$prefix, $id, $body] = explode(':', $token, 3);
    $raw = base64_decode($body, true);
    if ($prefix !== 'uk1' || $raw === false || !isset($ring['keys'][(int)$id])) {
        throw new RuntimeException('not a token this keyring can open');
    }
    $plain = openssl_decrypt(substr($raw, 12, -16), 'aes-256-gcm', $ring['keys'][(int)$id], OPENSSL_RAW_DATA,
                             substr($raw, 0, 12), substr($raw, -16), $aad);
    if ($plain === false) {
        throw new RuntimeException('the value does not decrypt here (wrong row, or tampered)');
    }
    return $plain;
}

header('Content-Type: text/plain');
$ring = unlocker_keyring();
if ($ring === null) {
    http_response_code(503);
    echo "no key: this pool (user " . posix_getpwuid(posix_geteuid())['name'] . ") has no grant\n";
    $other = @file_get_contents('/run/credentials/php-fpm-vault.service/dek');
    echo "reading the vault pool's credential directly: " . ($other === false ? "denied" : "ALLOWED") . "\n";
    exit;
}
$id = (int)($_GET['id'] ?? 1);
$value = (string)($_GET['value'] ?? '');
$aad = unlocker_aad('notes', 'body', (string)$id);
// MariaDB authenticates the pool's own system user over the local socket (unix_socket plugin).
$db = new mysqli('localhost', posix_getpwuid(posix_geteuid())['name'], '', 'shop');
$stmt = $db->prepare('REPLACE INTO notes (id, body) VALUES (?, ?)');
$token = unlocker_encrypt($ring, $value, $aad);
$stmt->bind_param('is', $id, $token);
$stmt->execute();
$stored = $db->query("SELECT body FROM notes WHERE id = $id")->fetch_row()[0];
echo "stored: $stored\n";
echo "read back: " . unlocker_decrypt($ring, $stored, $aad) . "\n";
