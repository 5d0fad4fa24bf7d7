// The TLS policy of every rapbox link (uplink, command channel, center):
// TLS 1.2+, FIPS 140-approved algorithms only: ECDHE over P-256/P-384,
// AES-GCM, SHA-2 signatures. Both ends use this one object.

export const TLS_POLICY = {
  minVersion: 'TLSv1.2',
  ciphers: [
    'TLS_AES_128_GCM_SHA256',
    'TLS_AES_256_GCM_SHA384',
    'ECDHE-ECDSA-AES128-GCM-SHA256',
    'ECDHE-ECDSA-AES256-GCM-SHA384',
    'ECDHE-RSA-AES128-GCM-SHA256',
    'ECDHE-RSA-AES256-GCM-SHA384',
  ].join(':'),
  ecdhCurve: 'P-256:P-384',
  // Signatures in the handshake: ECDSA and RSA-PSS/PKCS#1 over SHA-2 only (no SHA-1).
  sigalgs: [
    'ecdsa_secp256r1_sha256',
    'ecdsa_secp384r1_sha384',
    'rsa_pss_rsae_sha256',
    'rsa_pss_rsae_sha384',
    'rsa_pkcs1_sha256',
    'rsa_pkcs1_sha384',
  ].join(':'),
} as const;
