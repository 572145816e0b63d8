#!/usr/bin/env sh
# The certificate generator usage for a 3-node cluster: run once, on a trusted workstation.
#
#   deploy/cluster/make-certs.sh [OUT_DIR]
#
# Makes OUT_DIR (default deploy/cluster/certs, ignored by git) with
#   ca.pem, ca-key.pem         the cluster CA: for routes only, never the CA your clients trust
#   nN.pem, nN-key.pem         node nN's route certificate (serverAuth + clientAuth), key 0600
# Copy ca.pem, nN.pem and nN-key.pem to node nN (/etc/unibus/certs/, key mode 0600) and keep
# ca-key.pem offline. To add a node later, run `membershipd cluster certs` again with the
# same OUT_DIR and only the new --node: the existing CA signs it, nothing is overwritten.
set -eu
out="${1:-$(dirname "$0")/certs}"
umask 077
membershipd cluster certs --out "$out" \
    --node n1=10.0.0.1,n1.unibus.internal \
    --node n2=10.0.0.2,n2.unibus.internal \
    --node n3=10.0.0.3,n3.unibus.internal
