#!/usr/bin/env bash
# make-ca.sh: a private CA and the certificates for a campus-iot broker.
#
# For a test, a lab or a small site that has no PKI of its own. Writes into
# one directory (default ./pki):
#   ca.crt / ca.key          the CA (reused if the directory already has one)
#   NAME.crt / NAME.key      a server certificate (NAME: --server, default "server")
#                            whose subjectAltName holds every --dns and --ip, plus
#                            DNS:localhost and IP:127.0.0.1 unless --no-loopback
#   client-CN.crt / .key     one client certificate per --client CN (optional)
#   ca.cnf, index.txt, serial  the CA's own record of every certificate it issued
#
# Keys are written 0600. Give clients ca.crt only; keep ca.key off the broker.
#
# Examples:
#   make-ca.sh -o /etc/mosquitto/campus/certs --dns mqtt.school1.example --ip 10.1.0.5
#   make-ca.sh -o pki --no-server --client bridge-school1      # later: one more client
#   make-ca.sh -o pki --server expired --expired                # a test's expired certificate
set -euo pipefail

usage() {
    cat <<'EOF'
usage: make-ca.sh [options]
  -o, --out DIR        output directory (default ./pki); an existing CA there is reused
  --ca-cn TEXT         the CA's common name (default "campus-iot private CA")
  --ca-days N          validity of a new CA in days (default 3650)
  --dns NAME           a DNS name of the broker, for its certificate (repeatable)
  --ip ADDR            an IP address of the broker, for its certificate (repeatable)
  --no-loopback        leave DNS:localhost and IP:127.0.0.1 out of the server certificate
  --server NAME        basename of the server files (default "server")
  --no-server          issue no server certificate
  --client CN          issue a client certificate with this common name (repeatable)
  --days N             validity of issued certificates in days (default 397)
  --expired            issue certificates that expired yesterday (valid from 30 days ago), for tests
  --key-type ec|rsa    ec: P-256 (default), rsa: 3072 bits
  -h, --help           this text
EOF
}

out=./pki
ca_cn="campus-iot private CA"
ca_days=3650
days=397
server=server
issue_server=1
loopback=1
expired=0
key_type=ec
dns=()
ips=()
clients=()

need() { [[ $# -ge 2 && -n $2 ]] || { echo "make-ca.sh: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
    case $1 in
        -o|--out) need "$@"; out=$2; shift 2 ;;
        --ca-cn) need "$@"; ca_cn=$2; shift 2 ;;
        --ca-days) need "$@"; ca_days=$2; shift 2 ;;
        --dns) need "$@"; dns+=("$2"); shift 2 ;;
        --ip) need "$@"; ips+=("$2"); shift 2 ;;
        --no-loopback) loopback=0; shift ;;
        --server) need "$@"; server=$2; shift 2 ;;
        --no-server) issue_server=0; shift ;;
        --client) need "$@"; clients+=("$2"); shift 2 ;;
        --days) need "$@"; days=$2; shift 2 ;;
        --expired) expired=1; shift ;;
        --key-type) need "$@"; key_type=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "make-ca.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

for n in "$ca_days" "$days"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "make-ca.sh: days must be a positive whole number, not '$n'" >&2; exit 2; }
done
[[ $key_type == ec || $key_type == rsa ]] || { echo "make-ca.sh: --key-type is ec or rsa" >&2; exit 2; }
safe_name='^[A-Za-z0-9][A-Za-z0-9_.-]*$'
for n in "$server" "${clients[@]}"; do
    [[ $n =~ $safe_name ]] || { echo "make-ca.sh: '$n' is not a usable name (letters, digits, _ . -)" >&2; exit 2; }
done
if [[ $loopback == 1 ]]; then
    dns+=(localhost)
    ips+=(127.0.0.1)
fi
if [[ $issue_server == 1 && ${#dns[@]} -eq 0 && ${#ips[@]} -eq 0 ]]; then
    echo "make-ca.sh: a server certificate needs at least one --dns or --ip" >&2
    exit 2
fi
command -v openssl >/dev/null || { echo "make-ca.sh: openssl not found" >&2; exit 2; }

mkdir -p "$out"
cd "$out"
umask 077  # keys and the CA database are private; certificates are made readable below

new_key() {  # new_key FILE
    if [[ $key_type == ec ]]; then
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    else
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out "$1" 2>/dev/null
    fi
    chmod 600 "$1"
}

# ------------------------------------------------------------------ the CA
if [[ ! -f ca.key || ! -f ca.crt ]]; then
    cat > ca.cnf <<'EOF'
# Written by make-ca.sh: a minimal `openssl ca` for campus-iot.
[ ca ]
default_ca = campus_ca

[ campus_ca ]
dir = .
database = $dir/index.txt
serial = $dir/serial
new_certs_dir = $dir/issued
certificate = $dir/ca.crt
private_key = $dir/ca.key
default_md = sha256
policy = policy_any
# A renewed or test certificate may reuse a subject.
unique_subject = no
copy_extensions = none
email_in_dn = no

[ policy_any ]
commonName = supplied

[ req ]
distinguished_name = req_dn
prompt = no

[ req_dn ]
CN = unused

[ v3_ca ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    : > index.txt
    openssl rand -hex 16 > serial
    mkdir -p issued
    new_key ca.key
    openssl req -config ca.cnf -new -x509 -key ca.key -days "$ca_days" -sha256 -subj "/CN=$ca_cn" \
        -extensions v3_ca -out ca.crt
    chmod 644 ca.crt
    echo "make-ca.sh: new CA $(pwd)/ca.crt (valid $ca_days days)"
else
    echo "make-ca.sh: reusing CA $(pwd)/ca.crt"
fi

# ------------------------------------------------------------ issuing
if [[ $expired == 1 ]]; then
    validity=(-startdate "$(date -u -d '30 days ago' +%y%m%d%H%M%SZ)" -enddate "$(date -u -d '1 day ago' +%y%m%d%H%M%SZ)")
else
    validity=(-days "$days")
fi

issue() {  # issue BASENAME CN EXTENSIONS-TEXT
    local base=$1 cn=$2 ext=$3
    new_key "$base.key"
    openssl req -config ca.cnf -new -key "$base.key" -subj "/CN=$cn" -out "$base.csr"
    printf '%s\n' "[ ext ]" "$ext" > "$base.ext"
    openssl ca -config ca.cnf -batch -notext -in "$base.csr" -out "$base.crt" -extfile "$base.ext" \
        -extensions ext "${validity[@]}" 2>"$base.log" || { cat "$base.log" >&2; exit 1; }
    rm -f "$base.csr" "$base.ext" "$base.log"
    chmod 644 "$base.crt"
    echo "make-ca.sh: $(pwd)/$base.crt  CN=$cn  $(openssl x509 -in "$base.crt" -noout -enddate)"
}

common="basicConstraints = critical, CA:FALSE
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always"
if [[ $key_type == ec ]]; then
    usage_ext="keyUsage = critical, digitalSignature"
else
    usage_ext="keyUsage = critical, digitalSignature, keyEncipherment"
fi

if [[ $issue_server == 1 ]]; then
    san=()
    for d in "${dns[@]}"; do san+=("DNS:$d"); done
    for a in "${ips[@]}"; do san+=("IP:$a"); done
    san_text=$(IFS=,; echo "${san[*]}")
    issue "$server" "${dns[0]:-${ips[0]}}" "$common
$usage_ext
extendedKeyUsage = serverAuth
subjectAltName = $san_text"
fi

for c in "${clients[@]}"; do
    issue "client-$c" "$c" "$common
$usage_ext
extendedKeyUsage = clientAuth"
done
