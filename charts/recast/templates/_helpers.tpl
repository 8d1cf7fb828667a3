{{/* Names, labels and the pieces the operator and boot workloads share. */}}

{{- define "recast.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "recast.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "recast.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "recast.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "recast.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "recast.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: recast
{{- end -}}

{{/* Selector labels; "component" tells the operator's pods from the boot service's. */}}
{{- define "recast.selector" -}}
app.kubernetes.io/name: {{ include "recast.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "recast.serviceAccountName" -}}
{{- default (include "recast.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "recast.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "recast.imagingKeySecret" -}}
{{- default (printf "%s-imaging-key" (include "recast.fullname" .)) .Values.boot.imagingKeySecret -}}
{{- end -}}

{{/*
Whether the boot service binds a port below 1024 (DHCP 67, TFTP 69, or a low HTTP port): then
it must run as UID 0 holding only NET_BIND_SERVICE. Kubernetes grants added capabilities to a
non-root process only through file capabilities, which allowPrivilegeEscalation: false
(no_new_privs) switches off; root with every other capability dropped is the smaller grant.
*/}}
{{- define "recast.boot.privilegedPorts" -}}
{{- $httpsLow := and .Values.boot.https.enabled (lt (int .Values.boot.https.port) 1024) -}}
{{- $low := or .Values.boot.tftp.enabled (lt (int .Values.boot.httpPort) 1024) $httpsLow -}}
{{- if ne .Values.boot.dhcp.mode "off" -}}
{{- range .Values.boot.dhcp.ports -}}
{{- if lt (int .) 1024 -}}{{- $low = true -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- if $low -}}true{{- end -}}
{{- end -}}

{{/* The pod-level securityContext every recast pod uses. */}}
{{- define "recast.podSecurityContext" -}}
seccompProfile:
  type: RuntimeDefault
# The data volume's files belong to the operator's group, so the non-root user can write them.
fsGroup: 65532
{{- end -}}

{{/* Container securityContext of the operator without the boot service: non-root, nothing extra. */}}
{{- define "recast.securityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Container securityContext of a process that serves the boot service on the node's network. */}}
{{- define "recast.boot.securityContext" -}}
{{- if include "recast.boot.privilegedPorts" . -}}
# UID 0 only to bind ports below 1024 (see recast.boot.privilegedPorts in _helpers.tpl); every
# capability but the ones listed is dropped.
runAsNonRoot: false
runAsUser: 0
runAsGroup: 0
{{- else -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
{{- end }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
  {{- $caps := list }}
  {{- if include "recast.boot.privilegedPorts" . }}{{ $caps = append $caps "NET_BIND_SERVICE" }}{{ end }}
  {{- /* dhcp.interface pins the DHCP sockets with SO_BINDTODEVICE after bind(), which needs NET_RAW (operator/src/boot/dhcp.rs, bind). */}}
  {{- if and (ne .Values.boot.dhcp.mode "off") .Values.boot.dhcp.interface }}{{ $caps = append $caps "NET_RAW" }}{{ end }}
  {{- if $caps }}
  add: {{ toJson $caps }}
  {{- end }}
{{- end -}}

{{/* Environment every recast-operator process gets. */}}
{{- define "recast.env" -}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: RECAST_LOG
  value: {{ .Values.operator.logLevel | quote }}
{{- end -}}

{{/* The node's (or the configured) address on the provisioning network, as $(RECAST_SERVER_IP). */}}
{{- define "recast.boot.env" -}}
- name: RECAST_SERVER_IP
{{- if .Values.boot.serverIP }}
  value: {{ .Values.boot.serverIP | quote }}
{{- else }}
  valueFrom: {fieldRef: {fieldPath: status.hostIP}}
{{- end }}
{{- end -}}

{{/* recast-operator run flags of the boot service (only flags `recast-operator run --help` lists). */}}
{{- define "recast.boot.args" -}}
{{- $b := .Values.boot -}}
- --boot-http={{ $b.bindAddress }}:{{ $b.httpPort }}
- --boot-url={{ default (printf "http://$(RECAST_SERVER_IP):%d" (int $b.httpPort)) $b.url }}
{{- if $b.https.enabled }}
- --boot-https={{ $b.bindAddress }}:{{ $b.https.port }}
- --boot-https-url={{ default (printf "https://$(RECAST_SERVER_IP):%d" (int $b.https.port)) $b.https.url }}
- --boot-tls-cert=/etc/recast/boot-tls/tls.crt
- --boot-tls-key=/etc/recast/boot-tls/tls.key
{{- end }}
- --boot-root=/var/lib/recast/boot
- --imaging-key-file=/etc/recast/imaging/imaging.key
- --imaging-environment={{ $b.imagingEnvironment }}
- --unknown-macs={{ $b.unknownMacs }}
- --locale={{ $b.locale }}
- --time-zone={{ $b.timeZone }}
{{- if $b.tftp.enabled }}
- --tftp={{ $b.bindAddress }}:69
{{- end }}
{{- if $b.wdsServer }}
- --wds-server={{ $b.wdsServer }}
{{- end }}
{{- with $b.multicast }}
{{- if .interface }}
- --multicast-interface={{ .interface }}
- --multicast-group={{ .group }}
- --multicast-ports={{ .ports }}
- --multicast-sessions={{ .sessions }}
- --multicast-ttl={{ .ttl }}
- --multicast-max-mbps={{ .maxMbps }}
- --multicast-automatic-wait={{ .automaticWait }}
{{- end }}
{{- end }}
{{- if $b.gatewayUrl }}
- --gateway-url={{ $b.gatewayUrl }}
{{- end }}
{{- if ne $b.dhcp.mode "off" }}
- --dhcp={{ $b.dhcp.mode }}
- --dhcp-server-ip=$(RECAST_SERVER_IP)
- --dhcp-ports={{ join "," $b.dhcp.ports }}
{{- if $b.dhcp.interface }}
- --dhcp-interface={{ $b.dhcp.interface }}
{{- end }}
{{- if eq $b.dhcp.mode "full" }}
- --dhcp-leases=/etc/recast/dhcp/leases
- --dhcp-subnet-mask={{ $b.dhcp.subnetMask }}
{{- if $b.dhcp.router }}
- --dhcp-router={{ $b.dhcp.router }}
{{- end }}
{{- if $b.dhcp.dns }}
- --dhcp-dns={{ join "," $b.dhcp.dns }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Mounts of the boot service's inputs. */}}
{{- define "recast.boot.volumeMounts" -}}
- name: imaging-key
  mountPath: /etc/recast/imaging
  readOnly: true
{{- if .Values.boot.https.enabled }}
- name: boot-tls
  mountPath: /etc/recast/boot-tls
  readOnly: true
{{- end }}
{{- if eq .Values.boot.dhcp.mode "full" }}
- name: dhcp-leases
  mountPath: /etc/recast/dhcp
  readOnly: true
{{- end }}
{{- if .Values.boot.winpeClaim }}
- name: winpe
  mountPath: /var/lib/recast/boot/winpe
  readOnly: true
{{- end }}
{{- end -}}

{{- define "recast.boot.volumes" -}}
- name: imaging-key
  secret:
    secretName: {{ include "recast.imagingKeySecret" . }}
    defaultMode: 288 # 0440: owner and the fsGroup read
{{- if .Values.boot.https.enabled }}
- name: boot-tls
  secret:
    secretName: {{ required "boot.https.tlsSecret: name the kubernetes.io/tls Secret of the boot service's HTTPS listener" .Values.boot.https.tlsSecret }}
    defaultMode: 288 # 0440: owner and the fsGroup read
{{- end }}
{{- if eq .Values.boot.dhcp.mode "full" }}
- name: dhcp-leases
  configMap:
    name: {{ include "recast.fullname" . }}-dhcp-leases
{{- end }}
{{- if .Values.boot.winpeClaim }}
- name: winpe
  persistentVolumeClaim:
    claimName: {{ .Values.boot.winpeClaim }}
    readOnly: true
{{- end }}
{{- end -}}

{{/*
The boot root needs Debian's iPXE binaries inside it (the boot service refuses symlinks that
leave the root), and the root is writable (images/ is filled with verified WIMs), so an init
container copies them from the image into the volume.
*/}}
{{- define "recast.boot.initContainer" -}}
- name: ipxe
  image: {{ include "recast.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  # Copies the directory into the volume (merging if it exists): /var/lib/recast/boot/ipxe/...
  command: [/bin/cp, -R, /usr/share/recast/boot, /var/lib/recast/]
  securityContext:
    {{- include "recast.securityContext" . | nindent 4 }}
  volumeMounts:
    - name: data
      mountPath: /var/lib/recast
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {memory: 64Mi}
{{- end -}}

{{/* The boot pods' own, read-only ServiceAccount. */}}
{{- define "recast.bootServiceAccountName" -}}
{{- printf "%s-boot" (include "recast.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Namespaces where the operator may get Secrets, as a JSON list (see operator.secretNamespaces). */}}
{{- define "recast.secretNamespaces" -}}
{{- $list := .Values.operator.secretNamespaces -}}
{{- if and (not $list) .Values.operator.watchNamespace -}}
{{- $list = list .Values.operator.watchNamespace -}}
{{- end -}}
{{- toJson (default (list) $list) -}}
{{- end -}}

{{/* The operator Service's DNS name (the webhook certificate's subject). */}}
{{- define "recast.operatorServiceHost" -}}
{{- printf "%s-operator.%s.svc" (include "recast.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* Name of the Secret with the webhook's TLS certificate. */}}
{{- define "recast.webhookTlsSecret" -}}
{{- printf "%s-webhook-tls" (include "recast.fullname" .) -}}
{{- end -}}

{{/* Whether the admission webhook is deployed. */}}
{{- define "recast.webhookEnabled" -}}
{{- if and .Values.webhook.enabled (eq .Values.backend "kube") -}}true{{- end -}}
{{- end -}}

{{/* Whether the agent gateway is deployed: in the operator's pod (embedded) or as its own
Deployment of replicas (kube). */}}
{{- define "recast.gatewayEnabled" -}}
{{- if .Values.gateway.enabled -}}true{{- end -}}
{{- end -}}

{{/* The pods that serve the gateway: the operator's (embedded) or the gateway's own (kube). */}}
{{- define "recast.gatewayComponent" -}}
{{- ternary "operator" "gateway" (eq .Values.backend "embedded") -}}
{{- end -}}

{{- define "recast.gatewayServiceAccountName" -}}
{{- printf "%s-gateway" (include "recast.fullname" .) -}}
{{- end -}}

{{- define "recast.gatewayServiceHost" -}}
{{- printf "%s-gateway.%s.svc" (include "recast.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* Name of the Secret with the gateway's TLS certificate: the site's own, or the one
cert-manager or the chart writes. */}}
{{- define "recast.gatewayTlsSecret" -}}
{{- default (printf "%s-gateway-tls" (include "recast.fullname" .)) .Values.gateway.tlsSecret -}}
{{- end -}}

{{/* The names the gateway's certificate is for: the Service, the Ingress host, extra names. */}}
{{- define "recast.gatewayDnsNames" -}}
{{- $host := include "recast.gatewayServiceHost" . -}}
{{- $names := list $host (printf "%s.cluster.local" $host) -}}
{{- if .Values.gateway.ingress.host -}}{{- $names = append $names .Values.gateway.ingress.host -}}{{- end -}}
{{- range .Values.gateway.dnsNames -}}{{- $names = append $names . -}}{{- end -}}
{{- toJson $names -}}
{{- end -}}
