#!/bin/sh
# Regenerates the boot_trust test certificates (run once; the DER files are checked in, the keys
# are thrown away). RSA-2048 and sha256WithRSAEncryption, like the UEFI CAs they stand in for:
#   root-2011       self-signed "Test Root 2011"
#   ca-2011         "Test UEFI CA 2011", issued by root-2011   (stands in for Microsoft's 2011 CA)
#   signer-2011     "Test Boot Signer 2011", issued by ca-2011
#   ca-2023         self-signed "Test UEFI CA 2023"            (stands in for Windows UEFI CA 2023)
#   signer-2023     "Test Boot Signer 2023", issued by ca-2023
#   impostor-2011   self-signed "Test UEFI CA 2011" with another key: the name matches
#                   signer-2011's issuer, the signature does not
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ext="$tmp/ext.cnf"
printf '[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n[leaf]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n' >"$ext"
key() { openssl genrsa -out "$tmp/$1.key" 2048 2>/dev/null; }
selfsigned() { # name cn
  key "$1"
  openssl req -x509 -new -key "$tmp/$1.key" -subj "/O=recast test/CN=$2" -days 36500 -sha256 \
    -extensions ca -config "$ext" -set_serial "0x$(openssl rand -hex 8)" -outform DER -out "$1.der"
}
issued() { # name cn issuer section
  key "$1"
  openssl req -new -key "$tmp/$1.key" -subj "/O=recast test/CN=$2" -out "$tmp/$1.csr"
  openssl x509 -req -in "$tmp/$1.csr" -CA "$3.der" -CAform DER -CAkey "$tmp/$3.key" -days 36500 \
    -sha256 -extfile "$ext" -extensions "$4" -set_serial "0x$(openssl rand -hex 8)" -outform DER -out "$1.der"
}
selfsigned root-2011 "Test Root 2011"
issued ca-2011 "Test UEFI CA 2011" root-2011 ca
issued signer-2011 "Test Boot Signer 2011" ca-2011 leaf
selfsigned ca-2023 "Test UEFI CA 2023"
issued signer-2023 "Test Boot Signer 2023" ca-2023 leaf
selfsigned impostor-2011 "Test UEFI CA 2011"
