#!/usr/bin/env bash
# Regenerates the certificates of src/webconfig's unit tests (EC P-256,
# valid for 100 years): a CA with a server and a client certificate, a second
# server certificate from the same CA (a renewal), and a rogue CA with a
# client certificate of its own. For tests only: the keys are public.
set -euo pipefail
cd "$(dirname "$0")"
days=36500
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() { # name subject
  ec "$1-key.pem"
  openssl req -x509 -new -key "$1-key.pem" -subj "/CN=$2" -days "$days" -sha256 \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -out "$1.pem"
}
leaf() { # name ca subject usage [san]
  ec "$1-key.pem"
  openssl req -new -key "$1-key.pem" -subj "/CN=$3" -out "$1.csr"
  local ext
  ext=$(mktemp)
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=%s\n' "$4" >"$ext"
  [ -n "${5:-}" ] && printf 'subjectAltName=%s\n' "$5" >>"$ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2-key.pem" -CAcreateserial -days "$days" \
    -sha256 -extfile "$ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$ext"
}
ca ca "test CA"
leaf server ca "server" serverAuth "IP:127.0.0.1,DNS:localhost"
leaf renewed ca "renewed server" serverAuth "IP:127.0.0.1,DNS:localhost"
leaf client ca "client" clientAuth
ca rogue-ca "rogue CA"
leaf rogue-client rogue-ca "rogue client" clientAuth
rm -f ./*.srl ca-key.pem rogue-ca-key.pem
