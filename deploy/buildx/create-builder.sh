#!/bin/sh
# One docker buildx builder, "buildkit-fleet", with one remote node per
# architecture, each pointing at that architecture's Service (buildkitd-amd64,
# buildkitd-arm64: port 1234, mTLS), which is the arch's router: it passes each
# connection, TLS untouched, to the least-loaded builder (docs/deployment.md:
# "The router"). Then one command builds both natively:
#
#   docker buildx build --builder buildkit-fleet \
#     --platform linux/amd64,linux/arm64 \
#     --cache-from type=registry,ref=registry.example.com/app:buildcache \
#     --cache-to type=registry,ref=registry.example.com/app:buildcache,mode=max \
#     --tag registry.example.com/app:latest --push .
#
# buildx sends the linux/amd64 half to the amd64 node and the linux/arm64 half
# to the arm64 node, and assembles one multi-platform image.
#
# Client certificate: ca.crt, tls.crt and tls.key of a certificate signed by
# the fleet's CA. Without cert-manager, the openssl steps of docs/deployment.md
# ("Without cert-manager") write them into certs/. With components/cert-manager,
# they are the buildx-client-tls Secret's:
#
#   kubectl -n buildkit get secret buildx-client-tls -o jsonpath='{.data.ca\.crt}' | base64 -d > certs/ca.crt
#   kubectl -n buildkit get secret buildx-client-tls -o jsonpath='{.data.tls\.crt}' | base64 -d > certs/tls.crt
#   kubectl -n buildkit get secret buildx-client-tls -o jsonpath='{.data.tls\.key}' | base64 -d > certs/tls.key
set -eu

# Where the per-arch router Services are reached: the load balancers' addresses
# (`kubectl -n buildkit get svc buildkitd-amd64 buildkitd-arm64`), or the
# in-cluster names for CI that runs in the cluster.
AMD64_ENDPOINT=${AMD64_ENDPOINT:-tcp://buildkitd-amd64.buildkit.svc:1234}
ARM64_ENDPOINT=${ARM64_ENDPOINT:-tcp://buildkitd-arm64.buildkit.svc:1234}
# buildx needs absolute paths to the certificate files.
CERTS=${CERTS:-$PWD/certs}

# servername: the name buildkitd's certificate carries (its dnsNames), so the
# client can verify it even when it connects through a load balancer address
# and a router (neither terminates TLS: the certificate is the builder's).
docker buildx create --name buildkit-fleet --driver remote \
  --platform linux/amd64 \
  --driver-opt "cacert=$CERTS/ca.crt,cert=$CERTS/tls.crt,key=$CERTS/tls.key,servername=buildkitd-amd64.buildkit.svc" \
  "$AMD64_ENDPOINT"
docker buildx create --name buildkit-fleet --append --driver remote \
  --platform linux/arm64 \
  --driver-opt "cacert=$CERTS/ca.crt,cert=$CERTS/tls.crt,key=$CERTS/tls.key,servername=buildkitd-arm64.buildkit.svc" \
  "$ARM64_ENDPOINT"
docker buildx inspect --bootstrap buildkit-fleet
