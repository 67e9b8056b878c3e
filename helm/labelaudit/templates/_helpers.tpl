{{/* Names and labels ------------------------------------------------------------------------------- */}}

{{- define "labelaudit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "labelaudit.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "labelaudit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component: include with (dict "root" $ "component" "gateway"). */}}
{{- define "labelaudit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "labelaudit.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "labelaudit.labels" -}}
helm.sh/chart: {{ include "labelaudit.chart" .root }}
{{ include "labelaudit.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: labelaudit
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "labelaudit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "labelaudit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "labelaudit.secretName" -}}
{{- default (printf "%s-secrets" (include "labelaudit.fullname" .)) .Values.existingSecret }}
{{- end }}

{{- define "labelaudit.tritonUrl" -}}
{{- printf "%s-triton:%d" (include "labelaudit.fullname" .) (ternary 8001 8000 (eq .Values.triton.protocol "grpc")) }}
{{- end }}

{{/* An image reference: include with an image dict and the default tag. */}}
{{- define "labelaudit.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .defaultTag .image.tag) }}
{{- end }}
{{- end }}

{{- define "labelaudit.image" -}}
{{- include "labelaudit.imageRef" (dict "image" .Values.image "defaultTag" .Chart.AppVersion) }}
{{- end }}

{{/* Security ------------------------------------------------------------------------------------------ */}}

{{- define "labelaudit.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Every container, init containers included, gets exactly this. */}}
{{- define "labelaudit.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod spec pieces ----------------------------------------------------------------------------------- */}}

{{- define "labelaudit.podCommon" -}}
serviceAccountName: {{ include "labelaudit.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
securityContext:
  {{- include "labelaudit.podSecurityContext" . | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Scheduling of one component: include with its values (nodeSelector, tolerations, affinity, ...). */}}
{{- define "labelaudit.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Restarts pods when their settings change. */}}
{{- define "labelaudit.configChecksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}

{{/* One environment entry from the settings Secret: include with (dict "root" $ "name" ... "key" ...). */}}
{{- define "labelaudit.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "labelaudit.secretName" .root }}
      key: {{ .key }}
      optional: true
{{- end }}

{{/* The model repository ------------------------------------------------------------------------------ */}}

{{- define "labelaudit.modelVolume" -}}
- name: models
{{- if .Values.modelRepository.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.modelRepository.existingClaim }}
    readOnly: true
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.modelRepository.init.sizeLimit }}
{{- end }}
{{- end }}

{{- define "labelaudit.modelMount" -}}
- name: models
  mountPath: /models
  readOnly: true
{{- with .Values.modelRepository.subPath }}
  subPath: {{ . }}
{{- end }}
{{- end }}

{{- define "labelaudit.modelInitContainers" -}}
{{- if not .Values.modelRepository.existingClaim }}
initContainers:
  - name: fetch-model-repository
    image: {{ .Values.modelRepository.init.image }}
    imagePullPolicy: IfNotPresent
    command:
      {{- toYaml .Values.modelRepository.init.command | nindent 6 }}
    {{- with .Values.modelRepository.init.env }}
    env:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- include "labelaudit.containerSecurityContext" . | nindent 6 }}
    resources:
      {{- toYaml .Values.modelRepository.init.resources | nindent 6 }}
    volumeMounts:
      - name: models
        mountPath: /models
      - name: tmp
        mountPath: /tmp
{{- end }}
{{- end }}

{{/* Checks: `helm template` and `helm install` fail with these messages --------------------------------- */}}

{{- define "labelaudit.validate" -}}
{{- $v := .Values }}
{{- if and $v.consumer.enabled (gt (int $v.consumer.replicas) (int $v.kafka.topicPartitions)) }}
{{- fail (printf "consumer.replicas (%d) is more than kafka.topicPartitions (%d): a consumer group gives each partition to one consumer, so the extra consumers would sit idle. Lower consumer.replicas, or add partitions to the topic and raise kafka.topicPartitions." (int $v.consumer.replicas) (int $v.kafka.topicPartitions)) }}
{{- end }}
{{- if and (not $v.modelRepository.existingClaim) (not $v.modelRepository.init.image) }}
{{- fail "modelRepository: set existingClaim (a PersistentVolumeClaim holding the repository that `labelaudit export` wrote) or init.image and init.command (an init container that fills /models)." }}
{{- end }}
{{- if and (not $v.modelRepository.existingClaim) (not $v.modelRepository.init.command) }}
{{- fail "modelRepository.init.command is empty: say how the init container fills /models." }}
{{- end }}
{{- range $name, $_ := $v.settings }}
{{- if has $name (list "LABELAUDIT_API_KEY" "LABELAUDIT_STORE_URL" "LABELAUDIT_KAFKA_SASL_PASSWORD") }}
{{- fail (printf "settings.%s is a secret and would land in the ConfigMap: use auth.apiKey, store.url, kafka.sasl.password or existingSecret." $name) }}
{{- end }}
{{- if not (hasPrefix "LABELAUDIT_" $name) }}
{{- fail (printf "settings.%s: only LABELAUDIT_ settings belong here (serving/settings.py)." $name) }}
{{- end }}
{{- end }}
{{- if and $v.existingSecret (or $v.auth.apiKey $v.store.url $v.kafka.sasl.password) }}
{{- fail "existingSecret is set: leave auth.apiKey, store.url and kafka.sasl.password empty and put them in that Secret (keys api-key, store-url, kafka-sasl-password)." }}
{{- end }}
{{- if and $v.kafka.sasl.mechanism (not (hasPrefix "SASL_" $v.kafka.securityProtocol)) }}
{{- fail (printf "kafka.sasl.mechanism is set but kafka.securityProtocol is %s: use SASL_SSL (or SASL_PLAINTEXT)." $v.kafka.securityProtocol) }}
{{- end }}
{{- if and (hasPrefix "SASL_" $v.kafka.securityProtocol) (not $v.kafka.sasl.mechanism) }}
{{- fail (printf "kafka.securityProtocol is %s: set kafka.sasl.mechanism and kafka.sasl.username." $v.kafka.securityProtocol) }}
{{- end }}
{{- end }}
