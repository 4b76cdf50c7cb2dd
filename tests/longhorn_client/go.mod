module bifs.test/longhorn-client

go 1.19
